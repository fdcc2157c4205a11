//! Opening a connection's byte stream under `[network] encryption`:
//! dialling (plaintext or MSE first, the other once if the peer's side of
//! that handshake fails) and reading an incoming connection's first bytes
//! (the plaintext header, or else an MSE handshake as the responder).

use super::{read_handshake, ConnEnd, Transport, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};
use crate::config::Encryption;
use crate::mse::{self, Methods};
use crate::wire::{Handshake, HANDSHAKE_LEN, PROTOCOL};
use std::net::SocketAddr;
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

    /// What we may select when a peer dials us encrypted (none: refused).
    fn accept(self) -> Option<Methods> {
        match self {
            Encryption::Require => Some(Methods::RC4),
            Encryption::Prefer | Encryption::Allow => Some(Methods::BOTH),
            Encryption::Disable => None,
        }
    }
}

/// Why an attempt failed: before a TCP connection, or during the handshakes.
enum Failed {
    Connect(ConnEnd),
    Handshake(ConnEnd),
}

/// Dials `addr` under `policy`, exchanges handshakes (ours rides in the
/// MSE initial payload when encrypted) and says how it went. `worked`: how
/// the last connection to this peer was made, if known.
pub async fn dial(
    addr: SocketAddr,
    ours: &Handshake,
    policy: Encryption,
    worked: Option<Attempt>,
) -> Result<(Transport, Handshake), ConnEnd> {
    let (first, fallback) = policy.attempts(worked);
    match attempt(addr, ours, first, policy).await {
        Ok(x) => Ok(x),
        Err(Failed::Connect(end)) => Err(end),
        Err(Failed::Handshake(end)) => match fallback {
            Some(next) if worth_other_way(first, &end) => {
                tracing::debug!(peer = %addr, reason = %end, "handshake failed; trying {next:?} once");
                attempt(addr, ours, next, policy).await.map_err(|(Failed::Connect(e) | Failed::Handshake(e))| e)
            }
            _ => Err(end),
        },
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

async fn attempt(
    addr: SocketAddr,
    ours: &Handshake,
    how: Attempt,
    policy: Encryption,
) -> Result<(Transport, Handshake), Failed> {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr));
    let mut tcp = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failed::Connect(e.into())),
        Err(_) => return Err(Failed::Connect(ConnEnd::Timeout)),
    };
    let exchange = async {
        let mut t = match how {
            Attempt::Plaintext => {
                tcp.write_all(&ours.encode()).await?;
                Transport::Tcp(tcp)
            }
            Attempt::Encrypted => {
                let ia = ours.encode().to_vec();
                let est = mse::io::initiate(&mut tcp, ours.info_hash.0, policy.offer(), ia, HANDSHAKE_TIMEOUT).await?;
                Transport::encrypted(tcp, est)
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
    mut tcp: TcpStream,
    policy: Encryption,
    lookup: mse::io::Lookup<'_>,
) -> Result<(Transport, Handshake), ConnEnd> {
    let mut head = [0u8; 20];
    tcp.read_exact(&mut head).await?;
    if head[0] == 19 && head[1..] == PROTOCOL[..] {
        if policy == Encryption::Require {
            return Err(ConnEnd::Encryption("plaintext handshake refused (encryption = \"require\")".into()));
        }
        let mut buf = [0u8; HANDSHAKE_LEN];
        buf[..20].copy_from_slice(&head);
        tcp.read_exact(&mut buf[20..]).await?;
        return Ok((Transport::Tcp(tcp), Handshake::decode(&buf)?));
    }
    let Some(methods) = policy.accept() else {
        return Err(ConnEnd::Encryption("not a plaintext handshake (encryption = \"disable\")".into()));
    };
    let est = mse::io::respond(&mut tcp, &head, methods, lookup, HANDSHAKE_TIMEOUT).await?;
    let skey = est.skey;
    let mut t = Transport::encrypted(tcp, est);
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

    #[test]
    fn only_require_keeps_plaintext_out() {
        assert_eq!(Encryption::Require.offer(), Methods::RC4);
        assert_eq!(Encryption::Require.accept(), Some(Methods::RC4));
        assert_eq!(Encryption::Disable.accept(), None);
        for p in [Encryption::Prefer, Encryption::Allow] {
            assert_eq!((p.offer(), p.accept()), (Methods::BOTH, Some(Methods::BOTH)));
        }
    }
}
