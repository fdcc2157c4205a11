//! One DHT node (BEP 5) on one UDP socket of one address family: a routing
//! table, a store of announced peers, and iterative lookups. `mod.rs` runs
//! one per family (BEP 32) and joins their results.
//!
//! Tasks: the receive loop answers queries and routes responses to waiting
//! lookups; the maintenance loop bootstraps, pings questionable nodes and
//! rotates the token secret. Both belong to [`Node`] and stop on
//! [`Node::shutdown`]. Work per packet is bounded: replies are rate-capped,
//! and every table (peers, pending queries) has a fixed size.
//!
//! The two nodes of a daemon know each other as siblings: a query that
//! `want`s the other family's nodes is answered from the sibling's table,
//! and the other family's nodes a lookup hears of are handed to the sibling
//! while its table is nearly empty (how an IPv6 node starts when only IPv4
//! routers answer). The sibling's lock is never taken under our own.

use super::family::{Family, Want};
use super::krpc::{Body, Message, NodeId, Query, Response, MAX_PACKET};
use super::routing::{Insert, RoutingTable, K};
use crate::types::InfoHash;
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

const QUERY_TIMEOUT: Duration = Duration::from_secs(4);
/// Queries in flight at once, over all lookups.
const MAX_PENDING: usize = 256;
/// Replies sent per second at most; a query flood beyond is dropped.
const MAX_REPLIES_PER_SEC: u32 = 500;
/// Queries in flight per lookup, and queries per lookup at most.
const ALPHA: usize = 4;
/// Lookups running at once; hundreds of torrents starting together queue here
/// instead of flooding the network and the pending table.
const MAX_LOOKUPS: usize = 8;
const MAX_LOOKUP_QUERIES: usize = 64;
const LOOKUP_DEADLINE: Duration = Duration::from_secs(30);
/// Longest a lookup waits for the first bootstrap round.
const BOOTSTRAP_WAIT: Duration = Duration::from_secs(30);
/// Announced peers kept: torrents, peers per torrent, and for how long.
const MAX_STORED_TORRENTS: usize = 2000;
const MAX_PEERS_PER_TORRENT: usize = 100;
const PEER_TTL: Duration = Duration::from_secs(30 * 60);
/// Peers returned in one `get_peers` reply (keeps it under one datagram).
const MAX_VALUES: usize = 50;
const SECRET_EVERY: Duration = Duration::from_secs(5 * 60);
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);

struct Pending {
    addr: SocketAddr,
    /// Tells this query from a later one that reuses its transaction id.
    seq: u64,
    reply: oneshot::Sender<Response>,
}

/// Removes a query's pending entry however its future ends (answered,
/// timed out, or dropped when a lookup is cancelled).
struct PendingGuard<'a> {
    state: &'a Mutex<State>,
    tid: u16,
    seq: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut s = crate::locks::locked(self.state);
        if s.pending.get(&self.tid).is_some_and(|p| p.seq == self.seq) {
            s.pending.remove(&self.tid);
        }
    }
}

struct State {
    table: RoutingTable,
    pending: HashMap<u16, Pending>,
    next_tid: u16,
    next_seq: u64,
    /// Announced peers by info hash, with when they announced.
    store: HashMap<[u8; 20], Vec<(SocketAddr, Instant)>>,
    secret: [u8; 16],
    previous_secret: [u8; 16],
    secret_at: Instant,
    replies_window: (Instant, u32),
    /// Unknown nodes that queried us, by address, with when we last queued
    /// a ping for them: one a minute per address, so one source cannot fill
    /// the ping queue and keep genuine nodes out.
    pinged: HashMap<std::net::IpAddr, u64>,
}

/// Addresses remembered in [`State::pinged`] at most.
const MAX_PINGED: usize = 4096;
const PING_SAME_IP_EVERY: u64 = 60;

/// Whether to queue a ping for an unknown querier at `ip` now.
fn ping_due(pinged: &mut HashMap<std::net::IpAddr, u64>, ip: std::net::IpAddr, now: u64) -> bool {
    if pinged.get(&ip).is_some_and(|&at| now.saturating_sub(at) < PING_SAME_IP_EVERY) {
        return false;
    }
    if pinged.len() >= MAX_PINGED {
        pinged.retain(|_, at| now.saturating_sub(*at) < PING_SAME_IP_EVERY);
        if pinged.len() >= MAX_PINGED {
            return false;
        }
    }
    pinged.insert(ip, now);
    true
}

/// Datagrams for a node from a socket it shares with uTP, whose receive
/// loop reads the socket and passes on what is not uTP.
pub type Inbox = mpsc::Receiver<(Vec<u8>, SocketAddr)>;

/// A node's socket: its own (`inbox` none), or shared with uTP.
pub struct Bound {
    pub socket: Arc<UdpSocket>,
    pub inbox: Option<Inbox>,
}

pub struct Node {
    family: Family,
    socket: Arc<UdpSocket>,
    /// Where datagrams come from when the socket is shared (taken by the receive loop).
    inbox: Mutex<Option<Inbox>>,
    port: u16,
    started: Instant,
    state: Mutex<State>,
    bootstrap: Vec<String>,
    /// The node of the other family, when it runs.
    sibling: OnceLock<Weak<Node>>,
    /// Addresses to ping (from `port` messages), handled by maintenance.
    new_nodes: mpsc::Sender<SocketAddr>,
    lookups: tokio::sync::Semaphore,
    /// Turns true once the first bootstrap round is over.
    bootstrapped: tokio::sync::watch::Sender<bool>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Node {
    /// `inbox`, locked.
    fn inbox(&self) -> std::sync::MutexGuard<'_, Option<Inbox>> {
        crate::locks::locked(&self.inbox)
    }
}

impl Node {
    /// `tasks`, locked.
    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        crate::locks::locked(&self.tasks)
    }
}

impl Node {
    /// `state`, locked.
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::locks::locked(&self.state)
    }
}

/// Where a lookup stands with one candidate node.
enum Contact {
    Unasked,
    /// Asked; no answer yet.
    Asked,
    /// Answered, with the write token it gave (for `get_peers`).
    Answered(Option<Vec<u8>>),
}

/// The kind of iterative lookup.
#[derive(Clone, Copy)]
enum Lookup {
    Nodes(NodeId),
    Peers([u8; 20]),
}

impl Node {
    /// Starts a node's tasks on `socket`, bound to an address of `family`.
    /// `saved` are the nodes of this family saved at the last shutdown;
    /// `bootstrap` the configured routers, resolved at each bootstrap round.
    pub(super) fn start(
        family: Family,
        bound: Bound,
        own: NodeId,
        saved: Vec<SocketAddr>,
        bootstrap: Vec<String>,
    ) -> std::io::Result<Arc<Node>> {
        let Bound { socket, inbox } = bound;
        let port = socket.local_addr()?.port();
        let (new_nodes, new_rx) = mpsc::channel(64);
        let now = Instant::now();
        let node = Arc::new(Node {
            family,
            socket,
            inbox: Mutex::new(inbox),
            port,
            started: now,
            state: Mutex::new(State {
                table: RoutingTable::new(own),
                pending: HashMap::new(),
                next_tid: rand::random(),
                next_seq: 0,
                store: HashMap::new(),
                secret: rand::random(),
                previous_secret: rand::random(),
                secret_at: now,
                replies_window: (now, 0),
                pinged: HashMap::new(),
            }),
            bootstrap,
            sibling: OnceLock::new(),
            new_nodes,
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
            bootstrapped: tokio::sync::watch::Sender::new(false),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let saved = saved.into_iter().filter(|a| Family::of(a) == family).collect();
        let receive = tokio::spawn(node.clone().receive_loop());
        let maintain = tokio::spawn(node.clone().maintain_loop(saved, new_rx));
        node.tasks().extend([receive, maintain]);
        tracing::info!(port, family = %family, id = %crate::types::to_hex(&own.0[..4]), "DHT node listening");
        Ok(node)
    }

    /// Pairs the IPv4 and the IPv6 node (weakly: neither keeps the other alive).
    pub(super) fn pair(a: &Arc<Node>, b: &Arc<Node>) {
        let _ = a.sibling.set(Arc::downgrade(b));
        let _ = b.sibling.set(Arc::downgrade(a));
    }

    fn sibling(&self) -> Option<Arc<Node>> {
        self.sibling.get().and_then(Weak::upgrade)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn node_count(&self) -> usize {
        self.state().table.len()
    }

    /// The nodes worth saving for the next start.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.state().table.addresses()
    }

    /// A peer told us its DHT port: ping it, and keep it if it answers.
    pub fn add_node(&self, addr: SocketAddr) {
        let _ = self.new_nodes.try_send(addr);
    }

    /// Stops both tasks.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks());
        for t in tasks {
            let _ = t.await;
        }
    }

    fn now_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    // ---- serving ----------------------------------------------------------

    async fn receive_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_PACKET + 1];
        let mut inbox = self.inbox().take();
        loop {
            let (n, from) = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.socket.recv_from(&mut buf), if inbox.is_none() => match r {
                    Ok(x) => x,
                    Err(_) => continue, // ICMP errors surface here; the query times out
                },
                Some((d, from)) = async { inbox.as_mut()?.recv().await }, if inbox.is_some() => {
                    let n = d.len().min(buf.len());
                    buf[..n].copy_from_slice(&d[..n]);
                    (n, from)
                }
            };
            let from = crate::compact::normalize(from);
            let Ok(msg) = Message::decode(&buf[..n]) else {
                continue; // junk is dropped: answering it would amplify floods
            };
            if let Some(reply) = self.handle(msg, from) {
                let _ = self.socket.try_send_to(&reply.encode(), from);
            }
        }
    }

    /// Handles one message; returns the reply to send, if any. No await:
    /// one packet costs a bounded amount of work under short locks, never
    /// two held at once.
    fn handle(&self, msg: Message, from: SocketAddr) -> Option<Message> {
        let now = self.now_secs();
        let mut s = self.state();
        match msg.body {
            Body::Response(r) => {
                let tid = tid_of(&msg.t)?;
                let p = s.pending.remove(&tid)?;
                if p.addr != from {
                    s.pending.insert(tid, p); // a reply from elsewhere is not the reply
                    return None;
                }
                if let Some(id) = msg.id {
                    if let Insert::Full { ping } = s.table.insert(id, from, now) {
                        for addr in ping.into_iter().take(2) {
                            let _ = self.new_nodes.try_send(addr); // fails twice: bad, replaceable
                        }
                    }
                }
                let _ = p.reply.send(r);
                None
            }
            Body::Error { .. } => {
                let tid = tid_of(&msg.t)?;
                if s.pending.get(&tid).is_some_and(|p| p.addr == from) {
                    s.pending.remove(&tid); // the waiting query sees its sender dropped
                }
                None
            }
            Body::Query(q) => {
                drop(s);
                self.handle_query(msg.t, msg.id, q, from, now)
            }
        }
    }

    /// Answers a query, within the reply cap. The other family's nodes,
    /// when wanted, are read from the sibling before our lock is taken.
    fn handle_query(&self, t: Vec<u8>, id: Option<NodeId>, q: Query, from: SocketAddr, now: u64) -> Option<Message> {
        {
            let mut s = self.state();
            let t0 = Instant::now();
            if t0.duration_since(s.replies_window.0) >= Duration::from_secs(1) {
                s.replies_window = (t0, 0);
            }
            if s.replies_window.1 >= MAX_REPLIES_PER_SEC {
                return None;
            }
            s.replies_window.1 += 1;
            if let Some(id) = id {
                if !s.table.heard_from(id, from, now) && ping_due(&mut s.pinged, from.ip(), now) {
                    // Unknown: it gets in once it answers a ping of ours.
                    let _ = self.new_nodes.try_send(from);
                }
            }
        }
        let other = self.family.other();
        let sibling_nodes = match &q {
            Query::FindNode { target, want } if Want::resolve(*want, self.family).has(other) => {
                self.sibling().map(|n| n.closest(target)).unwrap_or_default()
            }
            Query::GetPeers { info_hash, want } if Want::resolve(*want, self.family).has(other) => {
                self.sibling().map(|n| n.closest(&NodeId(*info_hash))).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let mut s = self.state();
        self.rotate_secret(&mut s);
        let body = answer(&mut s, q, from, self.family, sibling_nodes);
        Some(Message { t, id: Some(s.table.own_id()), body })
    }

    /// Live peers announced to us for `hash`, as a `get_peers` reply gives them.
    fn stored_peers(&self, hash: &[u8; 20]) -> Vec<SocketAddr> {
        let s = self.state();
        s.store.get(hash).map(|v| live_peers(v)).unwrap_or_default()
    }

    /// The K nodes of our table closest to `target`.
    fn closest(&self, target: &NodeId) -> Vec<(NodeId, SocketAddr)> {
        self.state().table.closest(target, K)
    }

    /// The families we ask for in `find_node` and `get_peers`: ours, and
    /// the sibling's when it runs (its nodes are handed to it).
    fn want(&self) -> Want {
        let ours = Want::only(self.family);
        if self.sibling().is_some() {
            ours.with(self.family.other())
        } else {
            ours
        }
    }

    /// Other-family nodes a lookup heard of: pinged by the sibling, which
    /// keeps those that answer, while its table is nearly empty.
    fn hand_to_sibling(&self, nodes: impl Iterator<Item = SocketAddr>) {
        let Some(sibling) = self.sibling() else { return };
        if sibling.node_count() >= K {
            return;
        }
        for addr in nodes.take(K) {
            sibling.add_node(addr);
        }
    }

    fn rotate_secret(&self, s: &mut State) {
        if s.secret_at.elapsed() >= SECRET_EVERY {
            s.previous_secret = s.secret;
            s.secret = rand::random();
            s.secret_at = Instant::now();
        }
    }

    // ---- querying ---------------------------------------------------------

    /// Sends one query and waits for its response (`None` on timeout or error).
    async fn query(&self, addr: SocketAddr, q: Query) -> Option<Response> {
        if Family::of(&addr) != self.family {
            return None; // our socket cannot reach it
        }
        let (tx, rx) = oneshot::channel();
        let (guard, own) = {
            let mut s = self.state();
            if s.pending.len() >= MAX_PENDING {
                return None;
            }
            let mut tid = s.next_tid;
            while s.pending.contains_key(&tid) {
                tid = tid.wrapping_add(1);
            }
            s.next_tid = tid.wrapping_add(1);
            let seq = s.next_seq;
            s.next_seq += 1;
            s.pending.insert(tid, Pending { addr, seq, reply: tx });
            (PendingGuard { state: &self.state, tid, seq }, s.table.own_id())
        };
        let msg = Message { t: guard.tid.to_be_bytes().to_vec(), id: Some(own), body: Body::Query(q) };
        let sent = self.socket.send_to(&msg.encode(), addr).await.is_ok();
        let reply = if sent { tokio::time::timeout(QUERY_TIMEOUT, rx).await.ok().and_then(Result::ok) } else { None };
        drop(guard);
        if reply.is_none() {
            self.state().table.failed(addr);
        }
        reply
    }

    /// Finds peers for `info_hash` and, with `announce_port`, announces us to
    /// the closest nodes that gave a token.
    pub(super) async fn get_peers(
        self: &Arc<Self>,
        info_hash: InfoHash,
        announce_port: Option<u16>,
    ) -> Vec<SocketAddr> {
        // Torrents starting with the daemon wait for the first bootstrap
        // round, or their first lookup would find an empty table.
        let mut ready = self.bootstrapped.subscribe();
        let _ = tokio::time::timeout(BOOTSTRAP_WAIT, ready.wait_for(|b| *b)).await;
        let Ok(_turn) = self.lookups.acquire().await else {
            return Vec::new();
        };
        let (mut peers, closest) = self.lookup(Lookup::Peers(info_hash.0)).await;
        // Peers that announced to us count too: in a small swarm we may be
        // the node closest to the hash, whom nobody else can tell us about.
        for p in self.stored_peers(&info_hash.0) {
            if !peers.contains(&p) {
                peers.push(p);
            }
        }
        if let Some(port) = announce_port {
            let mut jobs = JoinSet::new();
            for (addr, token) in closest.into_iter().filter_map(|(a, t)| Some((a, t?))).take(K) {
                let dht = self.clone();
                let q = Query::AnnouncePeer { info_hash: info_hash.0, port, token, implied_port: false };
                jobs.spawn(async move { dht.query(addr, q).await });
            }
            while jobs.join_next().await.is_some() {}
        }
        peers
    }

    /// An iterative lookup: ask the closest known nodes, then the closer ones
    /// they name, until the closest K have answered. Returns the peers found
    /// and the closest responders with their tokens.
    async fn lookup(self: &Arc<Self>, kind: Lookup) -> (Vec<SocketAddr>, Vec<(SocketAddr, Option<Vec<u8>>)>) {
        let target = match kind {
            Lookup::Nodes(id) => id,
            Lookup::Peers(h) => NodeId(h),
        };
        let (own, start) = {
            let s = self.state();
            (s.table.own_id(), s.table.closest(&target, K * 2))
        };
        let mut shortlist: BTreeMap<[u8; 20], (SocketAddr, Contact)> = BTreeMap::new();
        for (id, addr) in start {
            shortlist.insert(id.distance(&target), (addr, Contact::Unasked));
        }
        let mut peers = HashSet::new();
        let mut asked = 0;
        let mut jobs = JoinSet::new();
        let deadline = tokio::time::sleep(LOOKUP_DEADLINE);
        tokio::pin!(deadline);
        loop {
            // Ask the closest unasked candidates, while the closest K are not all answered.
            while jobs.len() < ALPHA && asked < MAX_LOOKUP_QUERIES {
                let next = shortlist.iter_mut().take(K).find(|(_, (_, c))| matches!(c, Contact::Unasked)).map(
                    |(d, (addr, c))| {
                        *c = Contact::Asked;
                        (*d, *addr)
                    },
                );
                let Some((dist, addr)) = next else { break };
                asked += 1;
                let dht = self.clone();
                let q = match kind {
                    Lookup::Nodes(t) => Query::FindNode { target: t, want: Some(self.want()) },
                    Lookup::Peers(h) => Query::GetPeers { info_hash: h, want: Some(self.want()) },
                };
                jobs.spawn(async move { (dist, dht.query(addr, q).await) });
            }
            let done = tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = &mut deadline => break,
                d = jobs.join_next() => d,
            };
            let Some(Ok((dist, reply))) = done else {
                break; // nothing in flight and nothing left to ask
            };
            let Some(r) = reply else {
                shortlist.remove(&dist);
                continue;
            };
            if let Some(e) = shortlist.get_mut(&dist) {
                e.1 = Contact::Answered(r.token.clone());
            }
            peers.extend(r.values.iter().filter(|a| a.port() != 0));
            let (ours, theirs): (Vec<_>, Vec<_>) = r
                .nodes
                .into_iter()
                .filter(|(id, a)| *id != own && a.port() != 0)
                .partition(|(_, a)| Family::of(a) == self.family);
            for (id, addr) in ours {
                shortlist.entry(id.distance(&target)).or_insert((addr, Contact::Unasked));
            }
            self.hand_to_sibling(theirs.into_iter().map(|(_, a)| a));
            // Keep the shortlist small: only the closest matter.
            while shortlist.len() > K * 4 {
                shortlist.pop_last();
            }
        }
        let closest = shortlist
            .into_values()
            .filter_map(|(addr, c)| match c {
                Contact::Answered(token) => Some((addr, token)),
                _ => None,
            })
            .take(K)
            .collect();
        (peers.into_iter().collect(), closest)
    }

    // ---- maintenance ------------------------------------------------------

    /// Pings the saved and configured nodes, then looks up our own id, which
    /// fills the table with the nodes around us.
    async fn bootstrap_round(self: &Arc<Self>, saved: &[SocketAddr]) {
        let mut addrs = saved.to_vec();
        for b in &self.bootstrap {
            if let Ok(found) = tokio::net::lookup_host(b.as_str()).await {
                addrs.extend(found.filter(|a| Family::of(a) == self.family));
            }
        }
        let mut pings = JoinSet::new();
        for addr in addrs {
            let dht = self.clone();
            pings.spawn(async move {
                let _ = dht.query(addr, Query::Ping).await;
            });
        }
        while pings.join_next().await.is_some() {}
        let own = self.state().table.own_id();
        let _ = self.lookup(Lookup::Nodes(own)).await;
        tracing::debug!(nodes = self.node_count(), "DHT bootstrap round done");
    }

    async fn maintain_loop(self: Arc<Self>, saved: Vec<SocketAddr>, mut new_rx: mpsc::Receiver<SocketAddr>) {
        let mut last_bootstrap: Option<Instant> = None;
        let mut pings = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            let table_len = self.node_count();
            // Bootstrap at start, and again while the table stays nearly empty.
            if table_len < K && last_bootstrap.is_none_or(|t| t.elapsed() >= MAINTAIN_EVERY) {
                last_bootstrap = Some(Instant::now());
                tokio::select! {
                    _ = self.cancel.cancelled() => break,
                    _ = self.bootstrap_round(&saved) => {}
                }
                self.bootstrapped.send_replace(true);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(addr) = new_rx.recv() => {
                    if pings.len() < 16 {
                        let dht = self.clone();
                        pings.spawn(async move { let _ = dht.query(addr, Query::Ping).await; });
                    }
                }
                Some(_) = pings.join_next(), if !pings.is_empty() => {}
                _ = tick.tick() => {
                    let questionable = self.state().table.questionable(self.now_secs(), 4);
                    for addr in questionable {
                        if pings.len() < 16 {
                            let dht = self.clone();
                            pings.spawn(async move { let _ = dht.query(addr, Query::Ping).await; });
                        }
                    }
                    expire_store(&mut self.state().store);
                }
            }
        }
        pings.shutdown().await;
    }
}

/// Our answer to one query, on the socket of `family`; `sibling_nodes` are
/// the other family's closest nodes when the query wants them.
fn answer(s: &mut State, q: Query, from: SocketAddr, family: Family, sibling_nodes: Vec<(NodeId, SocketAddr)>) -> Body {
    // Our own family's nodes, unless the query asked for the other only.
    let nodes = |s: &State, target: &NodeId, want: Option<Want>| {
        let mut nodes = match Want::resolve(want, family).has(family) {
            true => s.table.closest(target, K),
            false => Vec::new(),
        };
        nodes.extend(sibling_nodes.iter().copied());
        nodes
    };
    match q {
        Query::Ping => Body::Response(Response::default()),
        Query::FindNode { target, want } => {
            Body::Response(Response { nodes: nodes(s, &target, want), ..Default::default() })
        }
        Query::GetPeers { info_hash, want } => {
            let token = Some(token_for(&s.secret, from.ip()));
            let values = s.store.get(&info_hash).map(|v| live_peers(v)).unwrap_or_default();
            let nodes = if values.is_empty() { nodes(s, &NodeId(info_hash), want) } else { Vec::new() };
            Body::Response(Response { nodes, values, token })
        }
        Query::AnnouncePeer { info_hash, port, token, implied_port } => {
            let valid = token == token_for(&s.secret, from.ip()) || token == token_for(&s.previous_secret, from.ip());
            if !valid {
                return Body::Error { code: 203, message: "bad token".into() };
            }
            let port = if implied_port { from.port() } else { port };
            store_peer(&mut s.store, info_hash, SocketAddr::new(from.ip(), port));
            Body::Response(Response::default())
        }
    }
}

/// Announced peers not yet expired, at most a reply's worth.
fn live_peers(list: &[(SocketAddr, Instant)]) -> Vec<SocketAddr> {
    list.iter().filter(|(_, at)| at.elapsed() < PEER_TTL).map(|(a, _)| *a).take(MAX_VALUES).collect()
}

fn tid_of(t: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(t.try_into().ok()?))
}

/// A write token: who asked (their IP) under our current secret.
fn token_for(secret: &[u8; 16], ip: IpAddr) -> Vec<u8> {
    let mut h = Sha1::new();
    h.update(secret);
    match ip {
        IpAddr::V4(v4) => h.update(v4.octets()),
        IpAddr::V6(v6) => h.update(v6.octets()),
    }
    h.finalize()[..8].to_vec()
}

fn store_peer(store: &mut HashMap<[u8; 20], Vec<(SocketAddr, Instant)>>, hash: [u8; 20], peer: SocketAddr) {
    if !store.contains_key(&hash) && store.len() >= MAX_STORED_TORRENTS {
        expire_store(store);
        if store.len() >= MAX_STORED_TORRENTS {
            return;
        }
    }
    let list = store.entry(hash).or_default();
    list.retain(|(a, _)| *a != peer);
    if list.len() >= MAX_PEERS_PER_TORRENT {
        list.remove(0); // the oldest announce
    }
    list.push((peer, Instant::now()));
}

fn expire_store(store: &mut HashMap<[u8; 20], Vec<(SocketAddr, Instant)>>) {
    store.retain(|_, list| {
        list.retain(|(_, at)| at.elapsed() < PEER_TTL);
        !list.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_gets_one_ping_a_minute() {
        let mut pinged = HashMap::new();
        let flood: std::net::IpAddr = [203, 0, 113, 7].into();
        assert!(ping_due(&mut pinged, flood, 0));
        assert!((1..59).all(|t| !ping_due(&mut pinged, flood, t)));
        assert!(ping_due(&mut pinged, flood, 60));
        // Many sources: the map stays bounded.
        for i in 0..10_000u32 {
            ping_due(&mut pinged, std::net::IpAddr::from(i.to_be_bytes()), 61);
        }
        assert!(pinged.len() <= MAX_PINGED);
    }

    #[test]
    fn tokens_depend_on_secret_and_ip() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(token_for(&[1; 16], a), token_for(&[1; 16], a));
        assert_ne!(token_for(&[1; 16], a), token_for(&[1; 16], b));
        assert_ne!(token_for(&[1; 16], a), token_for(&[2; 16], a));
    }

    #[test]
    fn peer_store_is_bounded() {
        let mut store = HashMap::new();
        for i in 0..(MAX_PEERS_PER_TORRENT as u32 + 20) {
            store_peer(&mut store, [1; 20], SocketAddr::from((i.to_be_bytes(), 6881)));
        }
        assert_eq!(store[&[1; 20]].len(), MAX_PEERS_PER_TORRENT);
        for i in 0..(MAX_STORED_TORRENTS as u32 + 50) {
            let mut h = [0u8; 20];
            h[..4].copy_from_slice(&i.to_be_bytes());
            store_peer(&mut store, h, "10.0.0.1:1".parse().unwrap());
        }
        assert_eq!(store.len(), MAX_STORED_TORRENTS);
    }

    /// A query dropped mid-flight (a cancelled lookup) leaves no pending
    /// entry behind; otherwise the table of pending queries would fill up.
    #[tokio::test]
    async fn cancelled_queries_leave_nothing_pending() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let node =
            Node::start(Family::V4, Bound { socket: Arc::new(socket), inbox: None }, NodeId::random(), vec![], vec![])
                .unwrap();
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let q = node.query(silent.local_addr().unwrap(), Query::Ping);
        assert!(tokio::time::timeout(Duration::from_millis(50), q).await.is_err());
        assert_eq!(node.state().pending.len(), 0);
        node.shutdown().await;
    }

    /// A query is answered with the families it wants: our own table's
    /// nodes, the sibling's (read before the call), or both.
    #[test]
    fn answers_follow_want() {
        let mut s = State {
            table: RoutingTable::new(NodeId([0; 20])),
            pending: HashMap::new(),
            next_tid: 0,
            next_seq: 0,
            store: HashMap::new(),
            secret: [1; 16],
            previous_secret: [2; 16],
            secret_at: Instant::now(),
            replies_window: (Instant::now(), 0),
            pinged: HashMap::new(),
        };
        let v4: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:6881".parse().unwrap();
        s.table.insert(NodeId([1; 20]), v4, 0);
        let sibling = vec![(NodeId([2; 20]), v6)];
        let from: SocketAddr = "10.0.0.9:1".parse().unwrap();
        let ask = |s: &mut State, want: Option<Want>, sibling: Vec<(NodeId, SocketAddr)>| {
            let q = Query::FindNode { target: NodeId([3; 20]), want };
            match answer(s, q, from, Family::V4, sibling) {
                Body::Response(r) => r.nodes.into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(ask(&mut s, None, vec![]), vec![v4], "no want: the socket's family");
        assert_eq!(ask(&mut s, Some(Want::only(Family::V6)), sibling.clone()), vec![v6]);
        let both = Some(Want::only(Family::V4).with(Family::V6));
        assert_eq!(ask(&mut s, both, sibling), vec![v4, v6]);
        // get_peers the same way, when no peers are stored.
        let q = Query::GetPeers { info_hash: [3; 20], want: Some(Want::only(Family::V6)) };
        let Body::Response(r) = answer(&mut s, q, from, Family::V4, vec![(NodeId([2; 20]), v6)]) else { panic!() };
        assert_eq!((r.nodes.len(), r.nodes[0].1, r.token.is_some()), (1, v6, true));
    }
}
