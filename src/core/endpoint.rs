//! `host:port` addresses of the link (`listen`, `peer`).
//!
//! Why not a `SocketAddr`: real deployments name peers by DNS (a Kubernetes
//! service, a data-centre host name) and a peer that moves must be found
//! again, so the name is kept as given and resolved by the link each time
//! it dials. Parsing stays pure (no lookup here); resolving is the link's
//! job, checking the result is [`crate::core::protect`]'s.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A link address as configured: a numeric IP or a host name, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The IP literal (IPv6 without brackets) or the host name, as given.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// What a valid `host:port` looks like; shared by every error text so the
/// README, `redis.conf.example` and the log say the same.
pub const EXPECTED: &str =
    "expected host:port, host a numeric IP or a DNS name ([v6]:port for IPv6), e.g. 10.0.0.2:7101 or redis-b.example:7101";

/// Is `h` a plausible DNS host name: dot-separated labels of letters,
/// digits and '-', none empty, none starting or ending with '-', at most
/// 253 characters (RFC 1123). A trailing dot (fully qualified) is allowed.
pub fn valid_host_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // All digits and dots would be a malformed IPv4 address, not a name.
        && !h.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl Endpoint {
    /// Parse `ip:port`, `[v6]:port` or `name:port`; `None` if it is none of
    /// those (the caller words the error with [`EXPECTED`]).
    pub fn parse(s: &str) -> Option<Endpoint> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Some(Endpoint {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        let (host, port) = s.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        if !valid_host_name(host) {
            return None;
        }
        Some(Endpoint {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The IP, when the host is a numeric literal (no lookup needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The socket address, when the host is a numeric literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.socket_addr() {
            Some(sa) => write!(f, "{sa}"),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_and_named_addresses() {
        let e = Endpoint::parse("127.0.0.1:7101").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 7101));
        assert_eq!(e.to_string(), "127.0.0.1:7101");
        assert!(e.ip().is_some());

        let e = Endpoint::parse("[::1]:7101").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.to_string(), "[::1]:7101");

        let e = Endpoint::parse("LocalHost:7112").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("localhost", 7112));
        assert_eq!(e.to_string(), "localhost:7112");
        assert!(e.ip().is_none());

        let e = Endpoint::parse("redis-b.bisync.svc.cluster.local.:7101").unwrap();
        assert_eq!(e.host, "redis-b.bisync.svc.cluster.local.");
    }

    #[test]
    fn malformed_addresses() {
        for bad in [
            "nowhere",
            "host:",
            ":7101",
            "host:70000",
            "host:port",
            "-bad:1",
            "bad-:1",
            "a..b:1",
            "under_score:1",
            "999.1.1.1:1",
            "::1:7101",
            "host name:1",
            "",
        ] {
            assert!(Endpoint::parse(bad).is_none(), "{bad:?} accepted");
        }
        assert!(!valid_host_name(&"a".repeat(64)));
        assert!(valid_host_name(&"a".repeat(63)));
    }
}
