//! dropseed: a headless BitTorrent seedbox daemon.
//!
//! # Architecture
//!
//! ```text
//!  watch folder ──┐                      ┌── tracker task (per torrent)
//!  control socket ├─> Daemon ─> Session ─┤── torrent task (per torrent) ── peer tasks
//!  signals ───────┘                      └── listener (routes incoming peers by info hash)
//!                                                 │
//!                                   disk pool (blocking threads: hash, mmap copies, flush)
//! ```
//!
//! * Pure logic lives in modules that do no I/O and read no clock: the bencode
//!   scanner, metainfo validation, the wire codec, the piece layout, the picker
//!   and the choker. They are unit-tested without sockets or sleeps.
//! * Every task has an owner: the daemon owns the session, the session owns the
//!   torrents, a torrent owns its tracker task and its peers (in a `JoinSet`).
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
