//! dropseed: a headless BitTorrent seedbox daemon.
//!
//! # Architecture
//!
//! ```text
//!  watch folder ──┐                      ┌── torrent task (per torrent) ─┬─ peer tasks
//!  control socket ├─> Daemon ─> Session ─┤                               ├─ tracker task
//!  signals ───────┘                      │                               └─ DHT lookups
//!                                        ├── magnet task (per magnet, until its metadata arrives)
//!                                        ├── listener (routes incoming peers by info hash)
//!                                        └── DHT node (receive loop, maintenance loop)
//!                                                 │
//!                                   disk pool (blocking threads: hash, mmap copies, flush)
//! ```
//!
//! * Pure logic lives in modules that do no I/O and read no clock: the bencode
//!   scanner, metainfo validation, the wire and extension codecs, metadata
//!   assembly, the KRPC codec and the DHT routing table, UDP tracker packets,
//!   the piece layout, the picker and the choker. They are unit-tested without
//!   sockets or sleeps.
//! * Every task has an owner: the daemon owns the session, the session owns the
//!   torrents, the magnets and the DHT node, a torrent owns its tracker task,
//!   its DHT lookups and its peers (in a `JoinSet`).
//!   Shutdown cancels the tree top-down and waits for it.
//! * Shared torrent state sits behind a `std::sync::Mutex` that is never held
//!   across an `.await`; the lock order is session map, then torrent state.
//! * Memory maps are only touched on the disk pool's threads, never on the
//!   async workers, so a page fault never stalls a peer.

pub mod bencode;
pub mod compact;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dht;
pub mod extension;
pub mod logging;
pub mod magnet;
pub mod metadata;
pub mod metainfo;
pub mod resume;
pub mod session;
pub mod storage;
pub mod torrent;
pub mod tracker;
pub mod types;
pub mod watch;
pub mod wire;
