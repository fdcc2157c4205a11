//! Opening a connection's byte stream under `[network] encryption` and
//! `[network] utp`: dialling (TCP first, uTP once if TCP cannot connect;
//! plaintext or MSE first, the other once if the peer's side of that
//! handshake fails) and reading an incoming connection's first bytes (the
//! plaintext header, or else an MSE handshake as the responder).
//!
//! TCP goes first because a seedbox wants throughput: TCP costs less CPU a
//! byte and does not yield to other traffic as uTP's LEDBAT does. uTP is
//! for the peers TCP cannot reach; a peer reached over uTP is dialled over
//! uTP first next time.

use super::transport::{Proto, Stream};
use super::{read_handshake, ConnEnd, Transport, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};
use crate::config::Encryption;
use crate::mse::{self, Methods};
use crate::utp::UtpSocket;
use crate::wire::{Handshake, HANDSHAKE_LEN, PROTOCOL};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How one outgoing attempt talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Plaintext,
    Encrypted,
}

impl Encryption {
    /// The first attempt and the fallback, if any. `worked`, what the
    /// peer took last time, goes first where the policy allows both.
    fn attempts(self, worked: Option<Attempt>) -> (Attempt, Option<Attempt>) {
        let (first, fallback) = match self {
            Encryption::Prefer => (Attempt::Encrypted, Some(Attempt::Plaintext)),
            Encryption::Require => (Attempt::Encrypted, None),
            Encryption::Allow => (Attempt::Plaintext, Some(Attempt::Encrypted)),
            Encryption::Disable => (Attempt::Plaintext, None),
        };
        match (worked, fallback) {
            (Some(w), Some(other)) if w == other => (other, Some(first)),
            _ => (first, fallback),
        }
    }

    /// crypto_provide when we dial; only RC4 where plaintext is refused.
    fn offer(self) -> Methods {
        match self {
            Encryption::Require => Methods::RC4,
            _ => Methods::BOTH,
        }
    }

    /// What we may select when a peer dials us encrypted (none: refused):
    /// RC4 first under `prefer`, plaintext first under `allow`.
    fn accept(self) -> Option<Methods> {
        match self {
            Encryption::Require => Some(Methods::RC4),
            Encryption::Prefer => Some(Methods::BOTH),
            Encryption::Allow => Some(Methods::BOTH_PLAINTEXT_FIRST),
            Encryption::Disable => None,
        }
    }
}

/// How a connection was made: the protocol and the encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Way {
    pub proto: Proto,
    pub crypto: Attempt,
}

/// What an outgoing connection may use: `[network] encryption` and
/// `[network] utp` (the socket, when uTP is on).
#[derive(Clone, Copy)]
pub struct Reach<'a> {
    pub encryption: Encryption,
    pub utp: Option<&'a Arc<UtpSocket>>,
    pub utp_first: bool,
}

impl Reach<'_> {
    /// The protocol to dial first, and the one to try if it fails: what
    /// worked last time first.
    fn protos(&self, addr: &SocketAddr, worked: Option<Proto>) -> (Proto, Option<Proto>) {
        let other = |p| if p == Proto::Tcp { Proto::Utp } else { Proto::Tcp };
        match (self.utp.filter(|u| u.reaches(addr)), worked) {
            (None, _) => (Proto::Tcp, None),
            (Some(_), Some(p)) => (p, Some(other(p))),
            (Some(_), None) if self.utp_first => (Proto::Utp, Some(Proto::Tcp)),
            (Some(_), None) => (Proto::Tcp, Some(Proto::Utp)),
        }
    }
}

/// Why an attempt failed: before a TCP connection, or during the handshakes.
enum Failed {
    Connect(ConnEnd),
    Handshake(ConnEnd),
}

/// Dials `addr` as `reach` allows, exchanges handshakes (ours rides in the
/// MSE initial payload when encrypted) and says how it went. `worked`: how
/// the last connection to this peer was made, if known.
pub async fn dial(
    addr: SocketAddr,
    ours: &Handshake,
    reach: Reach<'_>,
    worked: Option<Way>,
) -> Result<(Transport, Handshake), ConnEnd> {
    let (first, other) = reach.protos(&addr, worked.map(|w| w.proto));
    let crypto = worked.map(|w| w.crypto);
    let (policy, utp) = (reach.encryption, reach.utp);
    match dial_over(first, addr, ours, policy, utp, crypto).await {
        Err(failed) => match other {
            Some(next) if failed.worth_other_proto() => {
                let end = failed.end();
                tracing::debug!(peer = %addr, reason = %end, "no luck over {first:?}; trying {next:?} once");
                dial_over(next, addr, ours, policy, utp, crypto).await.map_err(Failed::end)
            }
            _ => Err(failed.end()),
        },
        ok => ok.map_err(Failed::end),
    }
}

impl Failed {
    /// A peer that cannot be reached, or hangs up before its handshake (as
    /// libtorrent does on TCP with TCP off, also in the middle of an
    /// encryption handshake), may be there on the other protocol.
    fn worth_other_proto(&self) -> bool {
        match self {
            Failed::Connect(_) => true,
            Failed::Handshake(end) => {
                matches!(end, ConnEnd::Closed | ConnEnd::Io(_) | ConnEnd::Timeout | ConnEnd::Encryption(_))
            }
        }
    }

    fn end(self) -> ConnEnd {
        match self {
            Failed::Connect(e) | Failed::Handshake(e) => e,
        }
    }
}

/// Dials over one protocol, with the encryption fallback.
async fn dial_over(
    proto: Proto,
    addr: SocketAddr,
    ours: &Handshake,
    policy: Encryption,
    utp: Option<&Arc<UtpSocket>>,
    worked: Option<Attempt>,
) -> Result<(Transport, Handshake), Failed> {
    let (first, fallback) = policy.attempts(worked);
    let connect = || connect(proto, addr, utp);
    match attempt(connect().await.map_err(Failed::Connect)?, ours, first, policy).await {
        Err(Failed::Handshake(end)) => match fallback {
            Some(next) if worth_other_way(first, &end) => {
                tracing::debug!(peer = %addr, reason = %end, "handshake failed; trying {next:?} once");
                attempt(connect().await.map_err(Failed::Connect)?, ours, next, policy).await
            }
            _ => Err(Failed::Handshake(end)),
        },
        r => r,
    }
}

async fn connect(proto: Proto, addr: SocketAddr, utp: Option<&Arc<UtpSocket>>) -> Result<Stream, ConnEnd> {
    let stream = match (proto, utp) {
        (Proto::Utp, Some(utp)) => {
            tokio::time::timeout(CONNECT_TIMEOUT, async { utp.connect(addr).await.map(Stream::Utp) }).await
        }
        _ => tokio::time::timeout(CONNECT_TIMEOUT, async { TcpStream::connect(addr).await.map(Stream::Tcp) }).await,
    };
    match stream {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ConnEnd::Timeout),
    }
}

/// Whether the other way might work: an MSE handshake that failed, or a
/// plaintext peer that hung up on us (as peers requiring encryption do).
fn worth_other_way(first: Attempt, end: &ConnEnd) -> bool {
    match first {
        Attempt::Encrypted => matches!(end, ConnEnd::Encryption(_)),
        Attempt::Plaintext => matches!(end, ConnEnd::Closed | ConnEnd::Io(_)),
    }
}

/// The handshakes over a connected stream.
async fn attempt(
    mut stream: Stream,
    ours: &Handshake,
    how: Attempt,
    policy: Encryption,
) -> Result<(Transport, Handshake), Failed> {
    let exchange = async {
        let mut t = match how {
            Attempt::Plaintext => {
                stream.write_all(&ours.encode()).await?;
                Transport::plain(stream)
            }
            Attempt::Encrypted => {
                let ia = ours.encode().to_vec();
                let est =
                    mse::io::initiate(&mut stream, ours.info_hash.0, policy.offer(), ia, HANDSHAKE_TIMEOUT).await?;
                Transport::encrypted(stream, est)
            }
        };
        let theirs = read_handshake(&mut t).await?;
        Ok::<_, ConnEnd>((t, theirs))
    };
    let (t, theirs) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await {
        Ok(r) => r.map_err(Failed::Handshake)?,
        Err(_) => return Err(Failed::Handshake(ConnEnd::Timeout)),
    };
    if theirs.info_hash != ours.info_hash {
        return Err(Failed::Handshake(ConnEnd::WrongTorrent));
    }
    Ok((t, theirs))
}

/// Reads an incoming connection's handshake: plaintext if it starts with
/// the protocol header, else MSE, where `lookup` finds the torrent from
/// HASH('req2', info hash). The caller bounds the time.
pub async fn accept(
    mut stream: Stream,
    policy: Encryption,
    lookup: mse::io::Lookup<'_>,
) -> Result<(Transport, Handshake), ConnEnd> {
    let mut head = [0u8; 20];
    stream.read_exact(&mut head).await?;
    if head[0] == 19 && head[1..] == PROTOCOL[..] {
        if policy == Encryption::Require {
            return Err(ConnEnd::Encryption("plaintext handshake refused (encryption = \"require\")".into()));
        }
        let mut buf = [0u8; HANDSHAKE_LEN];
        buf[..20].copy_from_slice(&head);
        stream.read_exact(&mut buf[20..]).await?;
        return Ok((Transport::plain(stream), Handshake::decode(&buf)?));
    }
    let Some(methods) = policy.accept() else {
        return Err(ConnEnd::Encryption("not a plaintext handshake (encryption = \"disable\")".into()));
    };
    let est = mse::io::respond(&mut stream, &head, methods, lookup, HANDSHAKE_TIMEOUT).await?;
    let skey = est.skey;
    let mut t = Transport::encrypted(stream, est);
    let theirs = read_handshake(&mut t).await?;
    if theirs.info_hash.0 != skey {
        return Err(ConnEnd::Protocol("the handshake names another torrent than the encryption's".into()));
    }
    Ok((t, theirs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Attempt::*;

    #[test]
    fn the_policy_orders_the_attempts_and_memory_reorders_only_within_it() {
        for (policy, first, fallback) in [
            (Encryption::Prefer, Encrypted, Some(Plaintext)),
            (Encryption::Require, Encrypted, None),
            (Encryption::Allow, Plaintext, Some(Encrypted)),
            (Encryption::Disable, Plaintext, None),
        ] {
            assert_eq!(policy.attempts(None), (first, fallback), "{policy:?}");
            assert_eq!(policy.attempts(Some(first)), (first, fallback), "{policy:?}");
        }
        // A peer that took plaintext last time is dialled plaintext first...
        assert_eq!(Encryption::Prefer.attempts(Some(Plaintext)), (Plaintext, Some(Encrypted)));
        assert_eq!(Encryption::Allow.attempts(Some(Encrypted)), (Encrypted, Some(Plaintext)));
        // ...but never against the policy.
        assert_eq!(Encryption::Require.attempts(Some(Plaintext)), (Encrypted, None));
        assert_eq!(Encryption::Disable.attempts(Some(Encrypted)), (Plaintext, None));
    }

    use crate::types::{InfoHash, PeerId};
    use tokio::net::TcpListener;

    const HASH: [u8; 20] = [9; 20];

    fn tcp_only(encryption: Encryption) -> Reach<'static> {
        Reach { encryption, utp: None, utp_first: false }
    }

    fn hs(id: u8) -> Handshake {
        Handshake::new(InfoHash(HASH), PeerId([id; 20]), false)
    }

    fn ours(req2: &[u8; 20]) -> Option<[u8; 20]> {
        (*req2 == mse::req2(&HASH)).then_some(HASH)
    }

    /// Dials a listener that accepts under `theirs` and answers; returns
    /// both ends' results.
    async fn meet(
        mine: Encryption,
        theirs: Encryption,
    ) -> (Result<(Transport, Handshake), ConnEnd>, Result<(Transport, Handshake), ConnEnd>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // Two connections at most: the first attempt and a fallback.
            let mut last = Err(ConnEnd::Closed);
            for _ in 0..2 {
                let Ok(Ok((tcp, _))) = tokio::time::timeout(std::time::Duration::from_secs(2), l.accept()).await else {
                    break;
                };
                last = accept(Stream::Tcp(tcp), theirs, &ours).await;
                if let Ok((t, _)) = &mut last {
                    super::super::answer(t, &hs(2)).await.unwrap();
                    break;
                }
            }
            last
        });
        let dialled = dial(addr, &hs(1), tcp_only(mine), None).await;
        (dialled, server.await.unwrap())
    }

    #[tokio::test]
    async fn both_ends_meet_encrypted_and_the_payload_flows() {
        let (d, a) = meet(Encryption::Require, Encryption::Prefer).await;
        let ((mut dt, dh), (mut at, ah)) = (d.unwrap(), a.unwrap());
        assert_eq!((dt.kind(), at.kind()), ("mse/rc4", "mse/rc4"));
        assert_eq!((dh.peer_id, ah.peer_id), (PeerId([2; 20]), PeerId([1; 20])));
        dt.write_all(b"ping").await.unwrap();
        dt.flush().await.unwrap();
        let mut got = [0u8; 4];
        at.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn each_policy_refuses_what_it_must() {
        // require refuses a plaintext dial...
        let (d, a) = meet(Encryption::Disable, Encryption::Require).await;
        assert!(d.is_err());
        assert!(matches!(a, Err(ConnEnd::Encryption(e)) if e.contains("plaintext handshake refused")));
        // ...and disable an encrypted one.
        let (d, a) = meet(Encryption::Require, Encryption::Disable).await;
        assert!(matches!(d, Err(ConnEnd::Encryption(_))), "no fallback under require");
        assert!(matches!(a, Err(ConnEnd::Encryption(e)) if e.contains("disable")));
        // prefer falls back to plaintext for a peer that refuses MSE.
        let (d, a) = meet(Encryption::Prefer, Encryption::Disable).await;
        assert_eq!((d.unwrap().0.kind(), a.unwrap().0.kind()), ("tcp", "tcp"));
        // allow dials plaintext, and encrypted once when the peer hangs up.
        let (d, a) = meet(Encryption::Allow, Encryption::Require).await;
        assert_eq!((d.unwrap().0.kind(), a.unwrap().0.kind()), ("mse/rc4", "mse/rc4"));
    }

    #[tokio::test]
    async fn an_encrypted_dial_for_a_torrent_we_lack_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            accept(Stream::Tcp(l.accept().await.unwrap().0), Encryption::Prefer, &|_| None).await
        });
        assert!(dial(addr, &hs(1), tcp_only(Encryption::Require), None).await.is_err());
        assert!(matches!(server.await.unwrap(), Err(ConnEnd::Encryption(e)) if e.contains("do not have")));
    }

    #[test]
    fn only_require_keeps_plaintext_out() {
        assert_eq!(Encryption::Require.offer(), Methods::RC4);
        assert_eq!(Encryption::Require.accept(), Some(Methods::RC4));
        assert_eq!(Encryption::Disable.accept(), None);
        assert_eq!((Encryption::Prefer.offer(), Encryption::Prefer.accept()), (Methods::BOTH, Some(Methods::BOTH)));
        assert_eq!(Encryption::Allow.offer(), Methods::BOTH);
        assert_eq!(Encryption::Allow.accept(), Some(Methods::BOTH_PLAINTEXT_FIRST));
    }
}
