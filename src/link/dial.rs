//! Finding the peer: resolve its configured address and connect.
//!
//! Why resolve on every dial: a peer named by DNS (a Kubernetes service, a
//! data-centre host name) may move; resolving once at load would keep
//! dialing the old address forever. Why the protected-mode check here too:
//! a name that resolved to loopback at load may resolve elsewhere later,
//! and an unauthenticated link must never be dialed off this machine.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::core::endpoint::Endpoint;
use crate::core::protect;

/// How long one connection attempt to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a dial found no connection.
#[derive(Debug)]
pub enum DialError {
    /// The peer is not there (refused, timed out): routine while it starts.
    Unreachable(String),
    /// Something the operator must see: a name that does not resolve, or an
    /// address protected mode does not allow.
    Refused(String),
}

/// Every address of `host` (a numeric IP is returned as is, no lookup).
pub fn lookup(host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
    Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// Resolve `peer` now and connect to the first address that answers; in
/// protected mode non-loopback addresses are skipped.
pub fn connect(peer: &Endpoint, protected: bool) -> Result<TcpStream, DialError> {
    let addrs: Vec<SocketAddr> = match peer.socket_addr() {
        Some(sa) => vec![sa],
        None => (peer.host.as_str(), peer.port)
            .to_socket_addrs()
            .map_err(|e| DialError::Refused(format!("cannot resolve peer {peer}: {e}")))?
            .collect(),
    };
    let mut last = DialError::Refused(format!("peer {peer} resolves to no address"));
    let mut refused = None;
    for sa in addrs {
        if !protect::dial_allowed(protected, sa.ip()) {
            refused = Some(format!(
                "protected mode: peer {peer} resolves to {}, which is not a loopback address; not dialing it without a secret or TLS (add secret-file on both servers)",
                sa.ip()
            ));
            continue;
        }
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                last = DialError::Unreachable(format!("cannot reach peer {peer} ({sa}): {e}"))
            }
        }
    }
    Err(match (refused, last) {
        (Some(why), DialError::Refused(_)) => DialError::Refused(why),
        (_, last) => last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_resolved_and_dialed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = Endpoint::parse(&format!("localhost:{port}")).unwrap();
        assert!(connect(&peer, true).is_ok());
    }

    #[test]
    fn protected_mode_never_dials_off_this_machine() {
        // 192.0.2.0/24 is TEST-NET-1: nothing may be sent there anyway.
        let peer = Endpoint::parse("192.0.2.1:7101").unwrap();
        match connect(&peer, true) {
            Err(DialError::Refused(why)) => assert!(why.contains("protected mode"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_name_is_reported() {
        let peer = Endpoint::parse("no-such-host.invalid:7101").unwrap();
        match connect(&peer, false) {
            Err(DialError::Refused(why)) => assert!(why.contains("cannot resolve"), "{why}"),
            other => panic!("expected a resolution error, got {other:?}"),
        }
    }
}
