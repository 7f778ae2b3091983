//! Module arguments: `name value` pairs from `loadmodule`.
//!
//! Why pure: a bad argument must refuse the load with one clear line naming
//! the argument and what is expected; that logic is tested here without Redis.

use thiserror::Error;

use super::endpoint::{self, Endpoint};

/// A refused argument list; the text is the log line.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// An argument name nobody knows.
    #[error("unknown argument '{0}' (expected one of: {known})", known = KNOWN.join(", "))]
    Unknown(String),
    /// A name with no value after it.
    #[error("argument '{0}' needs a value")]
    MissingValue(String),
    /// A required argument is absent.
    #[error("argument '{0}' is required ({1})")]
    Required(&'static str, &'static str),
    /// A value of the wrong shape.
    #[error("argument '{name}': {why}, got '{value}'")]
    Invalid {
        /// Argument name.
        name: &'static str,
        /// What was given.
        value: String,
        /// What is expected.
        why: String,
    },
    /// The same argument twice.
    #[error("argument '{0}' given twice")]
    Duplicate(String),
}

/// Every argument name, also the module config `bisync.<name>`.
pub const KNOWN: &[&str] = &[
    "node-id",
    "listen",
    "peer",
    "secret-file",
    "backlog-size",
    "history-size",
    "max-pending-keys",
    "max-clock-skew",
    "max-frame-size",
    "apply-budget",
    "ship-evictions",
    "tls-cert-file",
    "tls-key-file",
    "tls-ca-file",
    "tls-server-name",
    "insecure-allow-unauthenticated",
];

/// The files that turn on TLS for the link (all three, or none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain (PEM), presented both when it dials and
    /// when it is dialed.
    pub cert: String,
    /// The private key of that certificate (PEM).
    pub key: String,
    /// The CA certificate(s) the peer's certificate must chain to (PEM).
    pub ca: String,
    /// The name the peer's certificate must carry; by default the host of
    /// `peer` (its DNS name, or its IP).
    pub server_name: Option<String>,
}

/// The parsed, validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's unique, stable id.
    pub node_id: String,
    /// Address the link listens on (a name is resolved once, at load).
    pub listen: Endpoint,
    /// Address of the peer's link (a name is resolved on every dial).
    pub peer: Endpoint,
    /// Shared secret (from `secret` or read from `secret-file`), if any.
    pub secret: Option<Vec<u8>>,
    /// Path of the secret file, if given (shown instead of the secret).
    pub secret_file: Option<String>,
    /// Bound on the backlog of un-acknowledged batches, bytes.
    pub backlog_size: u64,
    /// Bound on the record of which keys recent batches changed, bytes
    /// (0: none kept; a restarted peer then always takes a full resync).
    pub history_size: u64,
    /// Bound on the un-acknowledged writes table, keys.
    pub max_pending_keys: u64,
    /// Largest accepted distance of a peer stamp ahead of the wall clock, ms.
    pub max_clock_skew_ms: u64,
    /// Largest frame accepted from an authenticated peer, bytes.
    pub max_frame_size: u64,
    /// Remote entries applied per event-loop iteration at most.
    pub apply_budget: u64,
    /// Ship evictions to the peer (off: each side manages its own memory).
    pub ship_evictions: bool,
    /// TLS for the link, if configured.
    pub tls: Option<TlsFiles>,
    /// Protected mode is off: an unauthenticated link may use non-loopback
    /// addresses (see [`crate::core::protect`]).
    pub insecure_allow_unauthenticated: bool,
}

/// Defaults, documented in `redis.conf.example`.
pub mod defaults {
    /// 64 MiB of backlog.
    pub const BACKLOG_SIZE: u64 = 64 << 20;
    /// 32 MiB of history: about 400,000 changed keys of 20 bytes.
    pub const HISTORY_SIZE: u64 = 32 << 20;
    /// One million pending keys.
    pub const MAX_PENDING_KEYS: u64 = 1_000_000;
    /// One minute of clock skew.
    pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;
    /// 512 MiB per frame (Redis's own proto-max-bulk-len).
    pub const MAX_FRAME_SIZE: u64 = 512 << 20;
    /// Entries applied per event-loop iteration.
    pub const APPLY_BUDGET: u64 = 10_000;
}

/// Parse `"64mb"`, `"1gb"`, `"4096"`, `"10k"` into bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = [
        ("gb", 1u64 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
        ("g", 1_000_000_000),
        ("m", 1_000_000),
        ("k", 1_000),
        ("b", 1),
    ]
    .iter()
    .find_map(|(suf, m)| lower.strip_suffix(suf).map(|n| (n.to_string(), *m)))
    .unwrap_or((lower.clone(), 1));
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn parse_addr(name: &'static str, v: &str) -> Result<Endpoint, ConfigError> {
    Endpoint::parse(v).ok_or_else(|| ConfigError::Invalid {
        name,
        value: v.to_string(),
        why: endpoint::EXPECTED.into(),
    })
}

fn parse_u64(
    name: &'static str,
    v: &str,
    min: u64,
    max: u64,
    bytes: bool,
) -> Result<u64, ConfigError> {
    let parsed = if bytes {
        parse_bytes(v)
    } else {
        v.parse().ok()
    };
    match parsed {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid {
            name,
            value: v.to_string(),
            why: format!(
                "expected {} between {min} and {max}",
                if bytes {
                    "a size (e.g. 64mb)"
                } else {
                    "an integer"
                }
            ),
        }),
    }
}

fn parse_bool(name: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" => Ok(true),
        "no" | "false" | "0" => Ok(false),
        _ => Err(ConfigError::Invalid {
            name,
            value: v.to_string(),
            why: "expected yes or no".into(),
        }),
    }
}

fn non_empty(name: &'static str, v: &str) -> Result<String, ConfigError> {
    if v.trim().is_empty() {
        return Err(ConfigError::Invalid {
            name,
            value: v.to_string(),
            why: "expected a non-empty value".into(),
        });
    }
    Ok(v.to_string())
}

/// Is `id` an acceptable node id: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// Arguments that `CONFIG SET bisync.<name>` may change at run time.
pub const RUNTIME: &[&str] = &[
    "backlog-size",
    "history-size",
    "max-pending-keys",
    "max-clock-skew",
    "apply-budget",
    "ship-evictions",
];

impl Config {
    /// The value `CONFIG GET bisync.<name>` shows. The secret is never shown.
    pub fn display(&self, name: &str) -> Option<String> {
        Some(match name {
            "node-id" => self.node_id.clone(),
            "listen" => self.listen.to_string(),
            "peer" => self.peer.to_string(),
            "secret-file" => self.secret_file.clone().unwrap_or_default(),
            "backlog-size" => self.backlog_size.to_string(),
            "history-size" => self.history_size.to_string(),
            "max-pending-keys" => self.max_pending_keys.to_string(),
            "max-clock-skew" => self.max_clock_skew_ms.to_string(),
            "max-frame-size" => self.max_frame_size.to_string(),
            "apply-budget" => self.apply_budget.to_string(),
            "ship-evictions" => yes_no(self.ship_evictions),
            "insecure-allow-unauthenticated" => yes_no(self.insecure_allow_unauthenticated),
            "tls-cert-file" => self
                .tls
                .as_ref()
                .map(|t| t.cert.clone())
                .unwrap_or_default(),
            "tls-key-file" => self.tls.as_ref().map(|t| t.key.clone()).unwrap_or_default(),
            "tls-ca-file" => self.tls.as_ref().map(|t| t.ca.clone()).unwrap_or_default(),
            "tls-server-name" => self
                .tls
                .as_ref()
                .and_then(|t| t.server_name.clone())
                .unwrap_or_default(),
            _ => return None,
        })
    }

    /// Change a run-time setting, validated exactly as at load; on error
    /// nothing changes.
    pub fn set_runtime(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        match name {
            "backlog-size" => {
                self.backlog_size = parse_u64("backlog-size", value, 1 << 10, 1 << 40, true)?
            }
            "history-size" => {
                self.history_size = parse_u64("history-size", value, 0, 1 << 40, true)?
            }
            "max-pending-keys" => {
                self.max_pending_keys = parse_u64("max-pending-keys", value, 1, 1 << 40, false)?
            }
            "max-clock-skew" => {
                self.max_clock_skew_ms = parse_u64("max-clock-skew", value, 1, 1 << 40, false)?
            }
            "apply-budget" => {
                self.apply_budget = parse_u64("apply-budget", value, 1, 1 << 30, false)?
            }
            "ship-evictions" => self.ship_evictions = parse_bool("ship-evictions", value)?,
            _ => return Err(ConfigError::Unknown(name.to_string())),
        }
        Ok(())
    }

    /// Parse the argument list. `read_file` reads `secret-file` (injected so
    /// tests need no files).
    pub fn parse<F>(args: &[String], read_file: F) -> Result<Config, ConfigError>
    where
        F: Fn(&str) -> std::io::Result<Vec<u8>>,
    {
        let mut seen: Vec<&str> = Vec::new();
        let mut node_id = None;
        let mut listen = None;
        let mut peer = None;
        let mut secret = None;
        let mut secret_file = None;
        let mut cfg_backlog = defaults::BACKLOG_SIZE;
        let mut cfg_history = defaults::HISTORY_SIZE;
        let mut cfg_pending = defaults::MAX_PENDING_KEYS;
        let mut cfg_skew = defaults::MAX_CLOCK_SKEW_MS;
        let mut cfg_frame = defaults::MAX_FRAME_SIZE;
        let mut cfg_budget = defaults::APPLY_BUDGET;
        let mut cfg_evict = false;
        let mut cfg_insecure = false;
        let mut tls_cert = None;
        let mut tls_key = None;
        let mut tls_ca = None;
        let mut tls_name = None;

        let mut it = args.iter();
        while let Some(raw_name) = it.next() {
            let lname = raw_name.to_ascii_lowercase();
            if lname == "secret" {
                // Redis shows loadmodule arguments in MODULE LIST and in every
                // HELLO reply: a secret there would leak to any client.
                return Err(ConfigError::Invalid {
                    name: "secret",
                    value: "<redacted>".into(),
                    why: "a secret in the loadmodule arguments is shown by MODULE LIST and HELLO; write it to a file and use secret-file <path>".into(),
                });
            }
            let name = KNOWN
                .iter()
                .find(|k| **k == lname)
                .copied()
                .ok_or_else(|| ConfigError::Unknown(raw_name.clone()))?;
            let value = it
                .next()
                .ok_or_else(|| ConfigError::MissingValue(name.to_string()))?;
            if seen.contains(&name) {
                return Err(ConfigError::Duplicate(name.to_string()));
            }
            seen.push(name);
            match name {
                "node-id" => {
                    if !valid_node_id(value) {
                        return Err(ConfigError::Invalid {
                            name: "node-id",
                            value: value.clone(),
                            why: "expected 1-64 characters of letters, digits, '-', '_' or '.'"
                                .into(),
                        });
                    }
                    node_id = Some(value.clone());
                }
                "listen" => listen = Some(parse_addr("listen", value)?),
                "peer" => peer = Some(parse_addr("peer", value)?),
                "secret-file" => {
                    let bytes = read_file(value).map_err(|e| ConfigError::Invalid {
                        name: "secret-file",
                        value: value.clone(),
                        why: format!("cannot read it ({e})"),
                    })?;
                    let trimmed: Vec<u8> = bytes.trim_ascii().to_vec();
                    if trimmed.len() < 16 {
                        return Err(ConfigError::Invalid {
                            name: "secret-file",
                            value: value.clone(),
                            why: "expected a secret of at least 16 bytes in the file".into(),
                        });
                    }
                    secret = Some(trimmed);
                    secret_file = Some(value.clone());
                }
                "backlog-size" => cfg_backlog = parse_u64(name, value, 1 << 10, 1 << 40, true)?,
                "history-size" => cfg_history = parse_u64(name, value, 0, 1 << 40, true)?,
                "max-pending-keys" => cfg_pending = parse_u64(name, value, 1, 1 << 40, false)?,
                "max-clock-skew" => cfg_skew = parse_u64(name, value, 1, 1 << 40, false)?,
                "max-frame-size" => cfg_frame = parse_u64(name, value, 1 << 16, 1 << 32, true)?,
                "apply-budget" => cfg_budget = parse_u64(name, value, 1, 1 << 30, false)?,
                "ship-evictions" => cfg_evict = parse_bool(name, value)?,
                "insecure-allow-unauthenticated" => cfg_insecure = parse_bool(name, value)?,
                "tls-cert-file" => tls_cert = Some(non_empty(name, value)?),
                "tls-key-file" => tls_key = Some(non_empty(name, value)?),
                "tls-ca-file" => tls_ca = Some(non_empty(name, value)?),
                "tls-server-name" => tls_name = Some(non_empty(name, value)?),
                _ => return Err(ConfigError::Unknown(raw_name.clone())),
            }
        }
        let node_id = node_id.ok_or(ConfigError::Required(
            "node-id",
            "a unique name for this node, e.g. node-id a",
        ))?;
        let listen = listen.ok_or(ConfigError::Required(
            "listen",
            "host:port the link listens on, e.g. listen 10.0.0.1:7101",
        ))?;
        let peer = peer.ok_or(ConfigError::Required(
            "peer",
            "host:port of the peer's link, e.g. peer 10.0.0.2:7101 or peer redis-b.example:7101",
        ))?;
        if listen == peer {
            return Err(ConfigError::Invalid {
                name: "peer",
                value: peer.to_string(),
                why: "must differ from listen".into(),
            });
        }
        let tls = match (tls_cert, tls_key, tls_ca) {
            (None, None, None) => {
                if let Some(name) = tls_name {
                    return Err(ConfigError::Invalid {
                        name: "tls-server-name",
                        value: name,
                        why: "only meaningful with tls-cert-file, tls-key-file and tls-ca-file"
                            .into(),
                    });
                }
                None
            }
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
                cert,
                key,
                ca,
                server_name: tls_name,
            }),
            (cert, key, _) => {
                let missing = if cert.is_none() {
                    "tls-cert-file"
                } else if key.is_none() {
                    "tls-key-file"
                } else {
                    "tls-ca-file"
                };
                return Err(ConfigError::Required(
                    missing,
                    "TLS needs tls-cert-file, tls-key-file and tls-ca-file together",
                ));
            }
        };
        Ok(Config {
            node_id,
            listen,
            peer,
            secret,
            secret_file,
            backlog_size: cfg_backlog,
            history_size: cfg_history,
            max_pending_keys: cfg_pending,
            max_clock_skew_ms: cfg_skew,
            max_frame_size: cfg_frame,
            apply_budget: cfg_budget,
            ship_evictions: cfg_evict,
            tls,
            insecure_allow_unauthenticated: cfg_insecure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn no_file(_: &str) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ))
    }

    #[test]
    fn minimal_arguments() {
        let c = Config::parse(
            &args("node-id a listen 127.0.0.1:7101 peer 127.0.0.1:7102"),
            no_file,
        )
        .unwrap();
        assert_eq!(c.node_id, "a");
        assert_eq!(c.listen.port, 7101);
        assert!(!c.insecure_allow_unauthenticated);
        assert_eq!(c.backlog_size, defaults::BACKLOG_SIZE);
        assert!(c.secret.is_none());
    }

    #[test]
    fn all_arguments() {
        let c = Config::parse(
            &args("NODE-ID a listen 127.0.0.1:1 peer 127.0.0.1:2 backlog-size 1mb max-pending-keys 10 max-clock-skew 5 max-frame-size 1mb apply-budget 7 ship-evictions yes secret-file /s"),
            |_| Ok(b"  0123456789abcdef\n".to_vec()),
        )
        .unwrap();
        assert_eq!(c.backlog_size, 1 << 20);
        assert_eq!(c.max_pending_keys, 10);
        assert_eq!(c.max_clock_skew_ms, 5);
        assert_eq!(c.apply_budget, 7);
        assert!(c.ship_evictions);
        assert!(c.tls.is_none());
        assert_eq!(c.secret.as_deref(), Some(&b"0123456789abcdef"[..]));
    }

    #[test]
    fn errors_name_the_argument() {
        let cases = [
            (
                "listen 127.0.0.1:1 peer 127.0.0.1:2",
                "'node-id' is required",
            ),
            ("node-id a peer 127.0.0.1:2", "'listen' is required"),
            ("node-id a listen 127.0.0.1:1", "'peer' is required"),
            (
                "node-id a listen nowhere peer 127.0.0.1:2",
                "argument 'listen': expected host:port, host a numeric IP or a DNS name",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer bad_name:2",
                "argument 'peer': expected host:port",
            ),
            (
                "node-id a listen localhost:1 peer LOCALHOST:1",
                "must differ",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 insecure-allow-unauthenticated sure",
                "argument 'insecure-allow-unauthenticated'",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 bogus 1",
                "unknown argument 'bogus'",
            ),
            ("node-id a listen 127.0.0.1:1 peer", "'peer' needs a value"),
            (
                "node-id a node-id b listen 127.0.0.1:1 peer 127.0.0.1:2",
                "'node-id' given twice",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 backlog-size lots",
                "argument 'backlog-size'",
            ),
            (
                "node-id a/b listen 127.0.0.1:1 peer 127.0.0.1:2",
                "argument 'node-id'",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 127.0.0.1:1",
                "must differ",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 secret-file /x",
                "cannot read it",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 secret short",
                "use secret-file",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 ship-evictions maybe",
                "yes or no",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 tls-cert-file a.crt tls-key-file a.key",
                "'tls-ca-file' is required",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 tls-ca-file ca.crt",
                "'tls-cert-file' is required",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 tls-server-name x",
                "argument 'tls-server-name'",
            ),
        ];
        for (a, want) in cases {
            let err = Config::parse(&args(a), no_file).unwrap_err().to_string();
            assert!(err.contains(want), "{a}: got '{err}', want '{want}'");
        }
    }

    #[test]
    fn secret_never_appears_in_errors() {
        let err = Config::parse(
            &args("node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 secret hunter2"),
            no_file,
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn runtime_set_validates_and_display_hides_secret() {
        let mut c = Config::parse(
            &args("node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 secret-file /s"),
            |_| Ok(b"0123456789abcdefXYZ".to_vec()),
        )
        .unwrap();
        assert_eq!(
            c.display("secret-file").unwrap(),
            "/s",
            "the path, never the secret"
        );
        c.set_runtime("backlog-size", "2mb").unwrap();
        assert_eq!(c.display("backlog-size").unwrap(), (2u64 << 20).to_string());
        let before = c.clone();
        assert!(c.set_runtime("backlog-size", "-1").is_err());
        assert!(c.set_runtime("node-id", "z").is_err());
        assert_eq!(c, before, "a refused set changes nothing");
        for name in KNOWN {
            assert!(c.display(name).is_some(), "{name} has a display");
        }
    }

    #[test]
    fn tls_files_together() {
        let c = Config::parse(
            &args("node-id a listen 127.0.0.1:1 peer 127.0.0.1:2 tls-cert-file a.crt tls-key-file a.key tls-ca-file ca.crt tls-server-name node-b"),
            no_file,
        )
        .unwrap();
        let t = c.tls.as_ref().unwrap();
        assert_eq!(
            (t.cert.as_str(), t.key.as_str(), t.ca.as_str()),
            ("a.crt", "a.key", "ca.crt")
        );
        assert_eq!(t.server_name.as_deref(), Some("node-b"));
        assert_eq!(c.display("tls-ca-file").unwrap(), "ca.crt");
    }

    #[test]
    fn peers_by_host_name() {
        let c = Config::parse(
            &args("node-id a listen localhost:7111 peer redis-b.example:7112 insecure-allow-unauthenticated yes"),
            no_file,
        )
        .unwrap();
        assert_eq!(c.peer.host, "redis-b.example");
        assert_eq!(c.peer.port, 7112);
        assert_eq!(c.display("listen").unwrap(), "localhost:7111");
        assert_eq!(c.display("peer").unwrap(), "redis-b.example:7112");
        assert_eq!(c.display("insecure-allow-unauthenticated").unwrap(), "yes");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("64mb"), Some(64 << 20));
        assert_eq!(parse_bytes("1GB"), Some(1 << 30));
        assert_eq!(parse_bytes("10k"), Some(10_000));
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes("99999999999999999999gb"), None);
    }
}
