//! uTP (BEP 29): BitTorrent connections over UDP, with LEDBAT congestion
//! control so that uploads yield to other traffic. Many peers behind home
//! routers, and libtorrent and Transmission by default, try uTP first.
//!
//! - `packet.rs`: the datagram codec (pure).
//! - `ledbat.rs`: the congestion window and the round-trip timer (pure).
//! - `conn.rs`: one connection's state machine (pure, clock from the caller);
//!   `conn_fuzz.rs` drives one with arbitrary packets for the fuzz target.
//! - `budget.rs`: the out-of-order bytes all connections hold together.
//! - `cookie.rs`: stateless SYN cookies (a SYN keeps nothing).
//! - `unsent.rs`: bytes to send, cut into packets as they are written.
//! - `batch.rs`: many datagrams per system call (`sendmmsg`, `recvmmsg`).
//! - `socket.rs`: the runtime on a UDP socket shared with the DHT, and
//!   [`UtpStream`], the byte stream the peer code sees.
//!
//! Why our own: see the design note "Why our own uTP" in
//! docs/architecture.md. In short, the crates there lack either delay-based
//! congestion control or a streaming read.

mod batch;
mod budget;
mod conn;
mod cookie;
mod ledbat;
pub mod packet;
mod socket;
mod unsent;

pub use socket::{UtpSocket, UtpStream, MAX_CONNECTIONS, OTHER_QUEUE};

/// For the `utp` fuzz target only: a connection fed arbitrary packets.
#[doc(hidden)]
pub use conn::fuzz::packets as fuzz_conn;
