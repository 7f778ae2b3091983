//! Protected mode for the link, like Redis's own protected mode.
//!
//! Why: without a secret and without TLS anyone who can reach the `listen`
//! port can write any key, and a full resync from such a "peer" can replace
//! the whole dataset. So an unauthenticated link may only use loopback
//! addresses (both ends on this machine), unless the operator opts out with
//! `insecure-allow-unauthenticated yes`.
//!
//! How a host name is checked: at load it is resolved, and every address it
//! resolves to must be loopback (a name that does not resolve is refused:
//! both ends of a loopback pair are on this machine, so it must resolve).
//! The peer is resolved again on every dial, and a non-loopback address is
//! never dialed ([`dial_allowed`]), so a name that later moves off this
//! machine is not followed.

use std::net::IpAddr;

use super::config::Config;
use super::endpoint::Endpoint;

/// The argument that turns protected mode off; named so that it reads as
/// what it is.
pub const OPT_OUT: &str = "insecure-allow-unauthenticated";

/// How to fix a refusal; part of the one log line.
const HOW_TO_FIX: &str = "add a shared secret on both servers: `bash scripts/install.sh` creates /etc/redis/bisync.secret (or: head -c 32 /dev/urandom | base64 > /etc/redis/bisync.secret; chmod 600 /etc/redis/bisync.secret), then add `secret-file /etc/redis/bisync.secret` to the loadmodule line; or configure TLS (tls-cert-file, tls-key-file, tls-ca-file); only on a network you trust, `insecure-allow-unauthenticated yes` turns this check off";

/// Is this address on this machine only (IPv4-mapped IPv6 included)?
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Does protected mode apply: no secret, no TLS, no opt-out.
pub fn protected(cfg: &Config) -> bool {
    cfg.secret.is_none() && cfg.tls.is_none() && !cfg.insecure_allow_unauthenticated
}

/// May the link dial `ip`? Always with a secret or TLS; in protected mode
/// only a loopback address.
pub fn dial_allowed(protected: bool, ip: IpAddr) -> bool {
    !protected || is_loopback(ip)
}

/// The reason the module must refuse to load, or `None`. `resolve` looks a
/// host name up (injected so the rule is tested without DNS); it is only
/// called for names, never for numeric addresses.
pub fn refusal<F>(cfg: &Config, resolve: F) -> Option<String>
where
    F: Fn(&str, u16) -> std::io::Result<Vec<IpAddr>>,
{
    if !protected(cfg) {
        return None;
    }
    for (name, ep) in [("listen", &cfg.listen), ("peer", &cfg.peer)] {
        if let Some(why) = not_loopback(ep, &resolve) {
            return Some(format!(
                "protected mode: {name} {ep} {why}, and the link has no secret and no TLS, so anyone who can reach it could write to this server; {HOW_TO_FIX}"
            ));
        }
    }
    None
}

fn not_loopback<F>(ep: &Endpoint, resolve: &F) -> Option<String>
where
    F: Fn(&str, u16) -> std::io::Result<Vec<IpAddr>>,
{
    let addrs = match ep.ip() {
        Some(ip) => vec![ip],
        None => match resolve(&ep.host, ep.port) {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => return Some("resolves to no address".into()),
            Err(e) => return Some(format!("cannot be resolved ({e})")),
        },
    };
    let outside: Vec<String> = addrs
        .iter()
        .filter(|ip| !is_loopback(**ip))
        .map(|ip| ip.to_string())
        .collect();
    match (outside.is_empty(), ep.ip().is_some()) {
        (true, _) => None,
        (false, true) => Some("is not a loopback address".into()),
        (false, false) => Some(format!(
            "resolves to a non-loopback address ({})",
            outside.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> Config {
        let args: Vec<String> = s.split_whitespace().map(String::from).collect();
        Config::parse(&args, |_| Ok(b"0123456789abcdef0123".to_vec())).unwrap()
    }

    fn dns(host: &str, _port: u16) -> std::io::Result<Vec<IpAddr>> {
        let ips: &[&str] = match host {
            "localhost" => &["127.0.0.1", "::1"],
            "mapped" => &["::ffff:127.0.0.1"],
            "split" => &["127.0.0.1", "10.0.0.2"],
            "far" => &["10.0.0.2"],
            "empty" => &[],
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such host",
                ))
            }
        };
        Ok(ips.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn refused(args: &str) -> Option<String> {
        refusal(&cfg(args), dns)
    }

    #[test]
    fn loopback_pairs_need_no_secret() {
        for args in [
            "node-id a listen 127.0.0.1:1 peer 127.0.0.1:2",
            "node-id a listen 127.0.0.5:1 peer [::1]:2",
            "node-id a listen localhost:1 peer localhost:2",
            "node-id a listen 127.0.0.1:1 peer mapped:2",
        ] {
            assert_eq!(refused(args), None, "{args}");
        }
    }

    #[test]
    fn anything_else_needs_a_secret_tls_or_the_opt_out() {
        for (args, says) in [
            (
                "node-id a listen 0.0.0.0:1 peer 127.0.0.1:2",
                "listen 0.0.0.0:1 is not a loopback address",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer 10.0.0.2:2",
                "peer 10.0.0.2:2 is not a loopback address",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer far:2",
                "peer far:2 resolves to a non-loopback address (10.0.0.2)",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer split:2",
                "non-loopback address (10.0.0.2)",
            ),
            (
                "node-id a listen 127.0.0.1:1 peer nosuch:2",
                "peer nosuch:2 cannot be resolved",
            ),
            (
                "node-id a listen empty:1 peer 127.0.0.1:2",
                "resolves to no address",
            ),
        ] {
            let line = refused(args).unwrap_or_else(|| panic!("{args} accepted"));
            assert!(line.contains(says), "{args}: {line}");
            assert!(line.contains("secret-file"), "says how to add a secret");
            assert!(!line.contains('\n'), "one line");
            let secret = format!("{args} secret-file /s");
            assert_eq!(refused(&secret), None, "with a secret: {secret}");
            let tls = format!("{args} tls-cert-file a tls-key-file b tls-ca-file c");
            assert_eq!(refused(&tls), None, "with TLS: {tls}");
            let opt_out = format!("{args} {OPT_OUT} yes");
            assert_eq!(refused(&opt_out), None, "opted out: {opt_out}");
            let kept = format!("{args} {OPT_OUT} no");
            assert!(refused(&kept).is_some(), "'no' keeps it on: {kept}");
        }
    }

    #[test]
    fn dialing_in_protected_mode_is_loopback_only() {
        let far: IpAddr = "10.0.0.2".parse().unwrap();
        let near: IpAddr = "::1".parse().unwrap();
        assert!(dial_allowed(true, near));
        assert!(!dial_allowed(true, far));
        assert!(dial_allowed(false, far));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
    }
}
