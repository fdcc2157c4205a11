//! Opening a torrent's data connections: dialling out, answering those the
//! listener routed here, admitting the peer (not ourselves, not banned, not
//! already connected, not one too many from its IP address), and running it
//! under the connection core.

use super::peer::PeerConn;
use super::picker::PeerKey;
use super::{PeerHandle, Refusal, TorrentShared};
use crate::conn::{self, ConnEnd, Transport, Way};
use crate::wire::Handshake;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Dials `addr` (TCP or uTP, plaintext or encrypted first as `worked`
/// says: how the last connection was made) and runs the connection until
/// it ends; also says how this one was made, if it was.
pub async fn outgoing(
    shared: Arc<TorrentShared>,
    addr: SocketAddr,
    worked: Option<Way>,
    cancel: CancellationToken,
) -> (ConnEnd, Option<Way>) {
    let ours = our_handshake(&shared);
    let (transport, theirs) = tokio::select! {
        _ = cancel.cancelled() => return (ConnEnd::Cancelled, None),
        r = conn::dial(addr, &ours, shared.env.reach(), worked) => match r {
            Ok(x) => x,
            Err(end) => return (end, None),
        },
    };
    let how = transport.way();
    (run_outgoing(shared, addr, transport, theirs, cancel).await, Some(how))
}

async fn run_outgoing(
    shared: Arc<TorrentShared>,
    addr: SocketAddr,
    transport: Transport,
    theirs: Handshake,
    cancel: CancellationToken,
) -> ConnEnd {
    let handle = match register(&shared, addr, theirs.peer_id.0, Some(addr)) {
        Ok(h) => h,
        Err(ConnEnd::Ourselves) => {
            shared.env.note_ourselves(addr);
            return ConnEnd::Ourselves;
        }
        Err(end) => return end,
    };
    tracing::debug!(torrent = %shared.name(), peer = %addr, transport = transport.kind(), "connected");
    let _counted = shared.env.metrics().connected(transport.way());
    let mut peer = PeerConn::new(shared.clone(), handle.clone(), addr, theirs);
    let end = conn::run(transport, &mut peer, &cancel).await;
    // Two seeds part for good, however the connection ended.
    if handle.is_seed.load(Ordering::Relaxed) && shared.is_complete() {
        return ConnEnd::BothSeeds;
    }
    end
}

/// Answers a connection whose handshake the listener read, and runs it.
pub async fn incoming(
    shared: Arc<TorrentShared>,
    mut transport: Transport,
    addr: SocketAddr,
    theirs: Handshake,
    cancel: CancellationToken,
) -> ConnEnd {
    let handle = match register(&shared, addr, theirs.peer_id.0, None) {
        Ok(h) => h,
        Err(ConnEnd::Ourselves) => {
            // Answered all the same, so that our dialling side learns it
            // reached itself (rather than a peer that hung up, retried).
            let _ = conn::answer(&mut transport, &our_handshake(&shared)).await;
            return ConnEnd::Ourselves;
        }
        Err(end) => return end,
    };
    // From here on, dropping the peer takes it out of the torrent again.
    let mut peer = PeerConn::new(shared.clone(), handle, addr, theirs);
    if let Err(end) = conn::answer(&mut transport, &our_handshake(&shared)).await {
        return end;
    }
    tracing::debug!(torrent = %shared.name(), peer = %addr, transport = transport.kind(), "accepted");
    let _counted = shared.env.metrics().connected(transport.way());
    conn::run(transport, &mut peer, &cancel).await
}

/// Admits a peer into the torrent's peer map, or says why not.
fn register(
    shared: &TorrentShared,
    addr: PeerKey,
    peer_id: [u8; 20],
    listen: Option<SocketAddr>,
) -> Result<Arc<PeerHandle>, ConnEnd> {
    if peer_id == shared.env.peer_id().0 {
        return Err(ConnEnd::Ourselves);
    }
    let per_host = shared.env.config().limits.max_peers_per_ip;
    let handle = Arc::new(PeerHandle::new(peer_id, listen));
    match shared.lock().peers_mut().admit(addr, handle.clone(), per_host) {
        Ok(()) => Ok(handle),
        Err(Refusal::Banned) => Err(ConnEnd::Banned),
        Err(Refusal::AlreadyConnected) => Err(ConnEnd::AlreadyConnected),
        Err(Refusal::HostFull) => Err(ConnEnd::IpFull),
    }
}

/// The DHT bit is set only where the DHT may be used: never for private torrents.
fn our_handshake(shared: &TorrentShared) -> Handshake {
    Handshake::new(shared.meta.info_hash, shared.env.peer_id(), shared.env.dht().is_some() && !shared.meta.private)
}
