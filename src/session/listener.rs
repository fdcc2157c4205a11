//! The TCP listener: reads each incoming peer's handshake and routes the
//! connection by info hash to its torrent or magnet.
//!
//! An accept error (EMFILE, ENFILE, ENOBUFS when the process or the system is
//! out of descriptors or memory) is not retried at once, which would spin:
//! the loop waits, longer while the errors go on, and says so once.

use super::entry::Entry;
use super::Session;
use crate::conn::{read_handshake, Transport, HANDSHAKE_TIMEOUT};
use crate::torrent::task::Cmd;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Handshakes read at once; more connections are shed.
const MAX_PENDING_HANDSHAKES: usize = 256;

pub(super) async fn bind(ip: IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(SocketAddr::new(ip, port)).await {
        Ok(l) => Ok(l),
        // A host without IPv6 still gets IPv4.
        Err(_) if ip.is_unspecified() && ip.is_ipv6() => Ok(TcpListener::bind(("0.0.0.0", port)).await?),
        Err(e) => Err(anyhow::anyhow!("cannot listen on {ip} port {port}: {e}")),
    }
}

/// Pause after failed accepts: 50 ms doubling to 1 s while they go on.
#[derive(Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    /// The pause after one more failure; the first of a streak is logged.
    pub fn failed(&mut self, what: &str, e: &std::io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(listener = what, error = %e, "cannot accept connections; backing off");
        }
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(50u64 << (self.failures - 1).min(5)).min(Duration::from_secs(1))
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

pub(super) async fn accept_loop(session: Arc<Session>, listener: TcpListener) {
    let mut handshakes = JoinSet::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            _ = session.cancel.cancelled() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    backoff.succeeded();
                    if handshakes.len() < MAX_PENDING_HANDSHAKES {
                        handshakes.spawn(route(session.clone(), stream, addr));
                    }
                }
                Err(e) => {
                    let pause = backoff.failed("peers", &e);
                    tokio::select! {
                        _ = session.cancel.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            },
        }
    }
    handshakes.shutdown().await;
}

/// Reads the handshake and hands the connection to whoever wants it.
async fn route(session: Arc<Session>, stream: TcpStream, addr: SocketAddr) {
    let mut stream = Transport::from(stream);
    let Ok(Ok(hs)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_handshake(&mut stream)).await else {
        return;
    };
    let registry = session.registry.lock().unwrap();
    match registry.get(&hs.info_hash) {
        Some(Entry::Torrent(t)) => {
            let _ = t.cmd.try_send(Cmd::Incoming(stream, addr, hs));
        }
        Some(Entry::Magnet(m)) => {
            if let Some(fetching) = &m.fetch {
                let _ = fetching.incoming.try_send((stream, addr, hs));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<u64> = (0..7).map(|_| b.failed("t", &e).as_millis() as u64).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed("t", &e), Duration::from_millis(50));
    }
}
