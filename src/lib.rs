//! dropseed: a headless BitTorrent seedbox daemon.
//!
//! # Architecture
//!
//! ```text
//!  watch folder (thread) ─┐
//!  control socket ────────┼─> Daemon ─> Session: registry InfoHash -> Entry
//!  signals (thread) ──────┘               ├─ Entry::Torrent: torrent task, through its phases
//!                                         │     Held -> Preparing -> Queued -> Active (tracker, DHT lookups, peers)
//!                                         ├─ Entry::Magnet: fetch task (metadata connections)
//!                                         ├─ Entry::Reserved: an add or removal under way
//!                                         ├─ listener (routes incoming peers by info hash)
//!                                         ├─ DHT nodes (IPv4, IPv6)
//!                                         └─ LSD (multicast announces, when on)
//!  every peer connection: conn::run(Transport, Handler) -> ConnEnd
//!  disk pool (blocking threads: hashing, mmap copies, flushes, state files)
//! ```
//!
//! * [`session`] holds one registry of entries by info hash; a slot is
//!   reserved before anything is written or spawned for a hash.
//! * A torrent's life is [`torrent::phase::Phase`], moved by one pure
//!   transition table; the active phase's timers are [`torrent::clock`], a
//!   pure function of the time passed in.
//! * [`conn`] is the connection core (handshakes, framing, queueing,
//!   keep-alives, timeouts, typed ends) under two handlers: the torrent's
//!   peer and the magnet's metadata fetcher; under it, a transport.
//! * Pure logic lives in modules that do no I/O and read no clock: the bencode
//!   scanner, metainfo validation, the wire and extension codecs, the fast
//!   extension's allowed-fast sets and request refusals, metadata
//!   assembly, the KRPC codec and the DHT routing table, UDP tracker packets,
//!   LSD announces with their schedule and rate gate,
//!   the piece layout, the picker, the choker, the phase table and the active
//!   clock. They are unit-tested without sockets or sleeps.
//! * Every task has an owner: the daemon owns the session, the session tracks
//!   every task it starts and waits for them on shutdown, a torrent's active
//!   phase owns its tracker task, its DHT lookups, its LSD registration and
//!   its peers; the DHT node and LSD stop after every torrent task.
//! * Shared torrent state sits behind a `std::sync::Mutex` that is never held
//!   across an `.await`; the lock order is the session's registry, then a
//!   torrent's state.
//! * [`hooks`] runs the user's programs at a torrent's events off the
//!   engine: bounded in number, queue and time, never through a shell.
//! * [`metrics`] renders `/metrics`: the engine bumps a few atomics
//!   ([`counters`]) where bytes and events happen; the rest is read at
//!   scrape time, in one pass.
//! * The top-level modules stand in layers, each importing only modules
//!   below it (docs/architecture.md, "Layering"; `tests/layering.rs`).
//! * Memory maps and files are only touched on the disk pool's threads (or
//!   `spawn_blocking`), never on the async workers, so a page fault or a slow
//!   filesystem never stalls a peer.

pub mod api;
pub mod bencode;
pub mod compact;
pub mod config;
pub mod confmsg;
pub mod confpath;
pub mod conn;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod dht;
pub mod download;
pub mod extension;
pub mod fsutil;
pub mod hookcmd;
pub mod hooks;
pub mod locks;
pub mod logfmt;
pub mod logging;
pub mod logring;
pub mod lsd;
pub mod magnet;
pub mod metadata;
pub mod metainfo;
pub mod metrics;
pub mod mse;
pub mod perms;
pub mod resume;
pub mod session;
pub mod share;
pub mod startup;
pub mod storage;
pub mod top;
pub mod torrent;
pub mod tracker;
pub mod types;
pub mod utp;
pub mod wallclock;
pub mod watch;
pub mod wire;
