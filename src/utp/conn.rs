//! One uTP connection as a pure state machine: packets and the clock come
//! in, packets to send and bytes to read come out. No sockets, no timers of
//! its own: the runtime (`utp/socket.rs`) feeds it datagrams, asks it what
//! to send, and wakes it at [`Conn::deadline`].
//!
//! Sending: the application's bytes wait in `unsent` (bounded) until the
//! window (the lesser of LEDBAT's and the peer's advertised one) lets them
//! out as packets, which stay in `flight` until acknowledged, cumulatively
//! or by selective ack. A packet with three later ones acknowledged, or
//! three duplicate acks, is sent again at once; after a timeout, everything
//! unacknowledged is.
//!
//! Receiving: packets in order go to `readable`; those ahead wait in
//! `reorder`. Both together stay within what we advertise: [`FIRST_RECV_BUF`]
//! until the listener matched the peer's handshake to a torrent (or we
//! dialled it), [`RECV_BUF`] after. Packets held out of order are also
//! bounded by [`MAX_REORDER_HELD`] per connection and by the socket's
//! shared [`Budget`] (one host holds a share of it at most); a peer
//! that overruns any of them only loses its own
//! packets.
//!
//! The handshake follows libtorrent and libutp: the SYN carries our receive
//! id and a random sequence number; the acceptor's STATE carries its next
//! sequence number, which is also that of its first data packet.
//!
//! A RESET ends the connection only if it acknowledges one of our latest
//! packets (the socket checks that it carries our receive id, or our send id as
//! libutp's do): a
//! blind forger must guess both, and our sequence numbers start at random.

#[cfg(test)]
use super::budget::HOST_SHARE;
use super::budget::{Budget, REORDER_BUDGET};
use super::ledbat::{Ledbat, Rtt};
use super::packet::{self, seq_before, Header, Kind, Packet, MAX_SACK_BYTES};
use super::unsent::Unsent;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// Bytes received and not yet read, in order or not, at most.
pub const RECV_BUF: usize = 1 << 20;
/// The same before the application's first read: a stranger who connects
/// and sends without being read holds this much, not a whole buffer.
const FIRST_RECV_BUF: usize = 64 * 1024;
/// Packets in flight at most, selectively acked ones included: a peer that
/// acks selectively and never cumulatively cannot make us keep more.
const MAX_FLIGHT: usize = 2 * super::ledbat::MAX_WINDOW / 1200;
/// How long a closed window waits before one packet probes it.
const PROBE_US: u64 = 2_000_000;
/// Silence, at least, before the tail probe (twice the round trip, or this).
const TAIL_PROBE_MIN_US: u64 = 5_000;
/// Bytes the application may queue beyond what is in flight.
pub const SEND_BUF: usize = 256 * 1024;
/// Packets held out of order at most.
const MAX_REORDER: u16 = 1024;
/// Bytes held out of order at most, each packet charged its payload and
/// [`REORDER_OVERHEAD`]; also charged to the socket's shared [`Budget`].
const MAX_REORDER_HELD: usize = RECV_BUF / 2;
/// What holding one packet out of order costs beyond its payload: the
/// allocation's header and the map's slot.
const REORDER_OVERHEAD: usize = 64;
/// Timeouts in a row (about two minutes with back-off) before giving up.
const MAX_TIMEOUTS: u32 = 7;
/// How long a SYN's connection waits for the peer's first packet.
const HALF_OPEN_US: u64 = 10_000_000;
/// SYNs sent before a connection attempt gives up.
const SYN_ATTEMPTS: u32 = 3;
/// Timeouts a closing connection waits for its FIN's ack: the bytes
/// before it were acknowledged or are lost anyway.
const FIN_TIMEOUTS: u32 = 2;
/// How far behind our oldest packet an ack may be and still be heeded.
const STALE_ACKS: usize = 1024;
/// Duplicate acks that mean a loss.
const DUP_ACKS: u8 = 3;

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Our SYN is out, not yet answered.
    SynSent,
    /// A SYN came and our STATE answered it; the peer has not yet shown
    /// that it got that STATE (its first packet acknowledges our random
    /// sequence number, as a SYN cookie would). Until then it holds no
    /// bytes and is not handed to the application; it ends at `expires`.
    SynReceived {
        expires: u64,
    },
    Connected,
    /// The application is done writing: our FIN goes after the queued bytes.
    Closing {
        fin_sent: bool,
    },
    Closed(End),
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides finished (or we closed and our FIN was acknowledged).
    Done,
    Reset,
    TimedOut,
}

#[derive(Debug)]
struct Sent {
    seq: u16,
    kind: Kind,
    payload: Bytes,
    sent_at: u64,
    /// The connection's count of packets sent, at this one's last sending:
    /// which of two packets went out later.
    order: u64,
    transmissions: u32,
    /// Acknowledged by a selective ack (it may still be reneged on).
    sacked: bool,
    /// Taken for lost: goes out again when the window allows.
    resend: bool,
}

/// One datagram to send: the header (with any extension) and the payload,
/// apart, so the kernel gathers the payload from the packet kept for
/// resending without a copy of ours.
#[derive(Clone, Copy)]
pub struct Datagram<'a> {
    pub head: &'a [u8],
    pub payload: &'a Bytes,
}

#[cfg(test)]
impl Datagram<'_> {
    pub fn len(self) -> usize {
        self.head.len() + self.payload.len()
    }

    pub fn to_vec(self) -> Vec<u8> {
        [self.head, self.payload].concat()
    }
}

/// What a connection went through, for its closing log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Data and FIN packets sent, first copies and resends.
    pub sent: u64,
    pub resent: u64,
    /// Packets found lost from acks.
    pub losses: u64,
    pub timeouts: u64,
    /// Tail probes sent.
    pub probes: u64,
}

pub struct Conn {
    state: State,
    tally: Tally,
    send_id: u16,
    recv_id: u16,
    /// Our next sequence number.
    seq_nr: u16,
    /// Theirs, the last received in order.
    ack_nr: u16,
    mss: usize,
    unsent: Unsent,
    flight: VecDeque<Sent>,
    /// Payload bytes believed in the network: not acked, not taken for lost.
    flight_bytes: usize,
    peer_window: usize,
    cc: Ledbat,
    rtt: Rtt,
    /// The last ack_nr the peer sent, and how often in a row.
    last_ack: u16,
    dup_acks: u8,
    rto_at: Option<u64>,
    timeouts: u32,
    readable: BytesMut,
    reorder: HashMap<u16, Vec<u8>>,
    /// Payload bytes in `reorder` (they count against the window).
    reorder_bytes: usize,
    /// What `reorder` is charged, to this connection and to `budget`.
    held: usize,
    budget: Arc<Budget>,
    /// The peer's address, for its host's share of `budget`.
    host: IpAddr,
    /// Their FIN's sequence number, once seen.
    fin_seq: Option<u16>,
    eof: bool,
    ack_due: bool,
    /// Echoed in `timestamp_diff`: how late their last packet arrived.
    reply_micro: u32,
    /// The window we last advertised, to tell when a read opens it enough to say so.
    advertised: usize,
    /// Whether the peer sent anything beyond its SYN: an accepted
    /// connection that never did is half-open, and closes without a FIN.
    heard: bool,
    /// Received bytes we hold at most ([`FIRST_RECV_BUF`] until
    /// [`Conn::open_window`], 0 once the application is gone).
    recv_limit: usize,
    /// When a packet may probe the peer's closed window.
    probe_at: Option<u64>,
    /// The tail probe: when the first unacknowledged packet goes again if
    /// nothing was heard, long before the timeout would resend everything.
    tail: TailProbe,
}

/// Packets at the end of a burst can be lost with nothing after them to
/// reveal it, or a peer can stay silent about what it holds; either way
/// only the timeout (half a second at least) would move the connection.
/// A probe after twice the round trip costs one packet and brings an ack
/// that shows what is missing (as TCP's tail loss probe, RFC 8985). One
/// probe per tail: after it, only new data or an ack that moves things on
/// arms another, so a silent peer gets one extra packet, not a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TailProbe {
    Idle,
    Armed {
        at: u64,
    },
    /// Fired: the probe goes with the next transmit.
    Due,
}

impl Conn {
    fn new(state: State, send_id: u16, recv_id: u16, seq_nr: u16, ack_nr: u16, mss: usize) -> Conn {
        Conn {
            state,
            tally: Tally::default(),
            send_id,
            recv_id,
            seq_nr,
            ack_nr,
            mss,
            unsent: Unsent::new(mss),
            flight: VecDeque::new(),
            flight_bytes: 0,
            peer_window: RECV_BUF,
            cc: Ledbat::new(mss),
            rtt: Rtt::new(),
            last_ack: seq_nr.wrapping_sub(1),
            dup_acks: 0,
            rto_at: None,
            timeouts: 0,
            readable: BytesMut::new(),
            reorder: HashMap::new(),
            reorder_bytes: 0,
            held: 0,
            budget: Budget::new(REORDER_BUDGET),
            host: Ipv4Addr::UNSPECIFIED.into(),
            fin_seq: None,
            eof: false,
            ack_due: false,
            reply_micro: 0,
            advertised: FIRST_RECV_BUF,
            heard: false,
            recv_limit: FIRST_RECV_BUF,
            probe_at: None,
            tail: TailProbe::Idle,
        }
    }

    /// A connection we open; its SYN goes out with the first transmit,
    /// numbered `seq_nr` (chosen at random by the caller). Packets for it
    /// arrive with `recv_id`.
    pub fn connect(recv_id: u16, seq_nr: u16, mss: usize) -> Conn {
        let mut c = Conn::new(State::SynSent, recv_id.wrapping_add(1), recv_id, seq_nr, 0, mss);
        c.queue_control(Kind::Syn);
        c
    }

    /// A connection a peer opened with `syn`; packets for it arrive with
    /// the SYN's id + 1. `seq_nr`: our first, chosen at random (the peer
    /// proves it heard us by acknowledging the one before it).
    pub fn accept(syn: &Header, seq_nr: u16, mss: usize, now: u64) -> Conn {
        let state = State::SynReceived { expires: now + HALF_OPEN_US };
        let mut c = Conn::new(state, syn.conn_id, syn.conn_id.wrapping_add(1), seq_nr, syn.seq_nr, mss);
        c.peer_window = syn.wnd_size as usize;
        c.ack_due = true;
        c
    }

    /// Charges what this connection holds out of order to `budget`, shared
    /// with the socket's other connections (before anything is held).
    pub fn with_budget(mut self, budget: Arc<Budget>, host: IpAddr) -> Conn {
        debug_assert_eq!(self.held, 0);
        self.budget = budget;
        self.host = host;
        self
    }

    /// The peer's handshake named one of our torrents (or we dialled it):
    /// it gets the whole receive buffer, not a stranger's.
    pub fn open_window(&mut self) {
        if self.recv_limit == FIRST_RECV_BUF {
            self.recv_limit = RECV_BUF;
            // A peer stalled on the small window hears that it opened.
            self.ack_due = true;
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Accepted, and the peer has not yet shown that it got our answer.
    pub fn is_half_open(&self) -> bool {
        matches!(self.state, State::SynReceived { .. })
    }

    pub fn tally(&self) -> Tally {
        self.tally
    }

    pub fn recv_id(&self) -> u16 {
        self.recv_id
    }

    pub fn send_id(&self) -> u16 {
        self.send_id
    }

    /// Takes what fits of `data` for sending; 0 when the buffer is full
    /// (or the connection is not open for writing).
    pub fn write(&mut self, data: &[u8]) -> usize {
        if !matches!(self.state, State::Connected | State::SynSent) {
            return 0;
        }
        self.unsent.push(data, SEND_BUF.saturating_sub(self.unsent.len()))
    }

    /// Whether a write would take bytes now.
    pub fn writable(&self) -> bool {
        self.unsent.len() < SEND_BUF
    }

    /// Moves received bytes into `out`; returns how many.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.readable.len());
        out[..n].copy_from_slice(&self.readable[..n]);
        self.readable.advance(n);
        // A window that opened by a quarter is worth telling a stalled peer.
        if self.window() >= self.advertised + RECV_BUF / 4 {
            self.ack_due = true;
        }
        n
    }

    /// Whether a transmit is owed (an ack, a window update) beyond data.
    pub fn ack_due(&self) -> bool {
        self.ack_due
    }

    pub fn readable_len(&self) -> usize {
        self.readable.len()
    }

    pub fn has_readable(&self) -> bool {
        !self.readable.is_empty()
    }

    /// All their bytes were read and they sent FIN.
    pub fn at_eof(&self) -> bool {
        self.eof && self.readable.is_empty()
    }

    /// The application is done: FIN after the queued bytes (none if the
    /// peer never said a word after its SYN: nobody waits for it).
    pub fn close(&mut self) {
        // Nobody will read again: hold nothing more.
        self.recv_limit = 0;
        self.readable = BytesMut::new();
        self.drop_reorder();
        match self.state {
            State::Connected if self.heard => self.state = State::Closing { fin_sent: false },
            State::Connected | State::SynSent | State::SynReceived { .. } => self.end(End::Done),
            _ => {}
        }
    }

    /// Ends it at once (the socket is shutting down): reads and writes fail.
    pub fn abort(&mut self) {
        self.end(End::Reset);
    }

    /// When [`Conn::on_timer`] or a window probe is next due.
    pub fn deadline(&self) -> Option<u64> {
        let tail = match self.tail {
            TailProbe::Armed { at } => Some(at),
            TailProbe::Idle | TailProbe::Due => None,
        };
        let expires = match self.state {
            State::SynReceived { expires } => Some(expires),
            _ => None,
        };
        [self.rto_at, self.probe_at, tail, expires].into_iter().flatten().min()
    }

    /// Arms the tail probe from now, if anything awaits an ack.
    fn arm_tail_probe(&mut self, now: u64) {
        self.tail = if self.flight.is_empty() {
            TailProbe::Idle
        } else {
            TailProbe::Armed { at: now + (2 * self.rtt.srtt()).max(TAIL_PROBE_MIN_US) }
        };
    }

    fn window(&self) -> usize {
        self.recv_limit.saturating_sub(self.readable.len() + self.reorder_bytes)
    }

    fn send_window(&self) -> usize {
        self.cc.window().min(self.peer_window)
    }

    /// Whether a packet of `len` payload bytes may go out now. With
    /// nothing in flight one may if the peer has room, or as a probe when
    /// its window has been closed for [`PROBE_US`].
    fn fits(&mut self, len: usize, now: u64) -> bool {
        if self.flight_bytes > 0 {
            return self.flight_bytes + len <= self.send_window();
        }
        if self.peer_window >= len.min(self.mss) {
            return true;
        }
        match self.probe_at {
            Some(at) if now >= at => {
                self.probe_at = None;
                true
            }
            Some(_) => false,
            None => {
                self.probe_at = Some(now + PROBE_US);
                false
            }
        }
    }

    fn queue_control(&mut self, kind: Kind) {
        let seq = self.seq_nr;
        self.seq_nr = self.seq_nr.wrapping_add(1);
        self.flight.push_back(Sent {
            seq,
            kind,
            payload: Bytes::new(),
            sent_at: 0,
            order: 0,
            transmissions: 0,
            sacked: false,
            resend: true,
        });
    }
}

/// What happened to one incoming packet's acknowledgements.
struct Acked {
    bytes: usize,
    newest_rtt: Option<u64>,
    /// The latest sent (by `Sent::order`) of the packets acknowledged.
    latest_order: u64,
}

impl Conn {
    /// Takes in one packet addressed to this connection.
    pub fn on_packet(&mut self, p: &Packet<'_>, now: u64) {
        let h = &p.header;
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        // Their SYN again: our answer was lost. Nothing in it is an ack.
        if h.kind == Kind::Syn {
            self.ack_due = self.state != State::SynSent;
            return;
        }
        if h.kind == Kind::Reset {
            if self.acks_recent(h.ack_nr) {
                self.end(End::Reset);
            }
            return;
        }
        // An ack for a packet we never sent is forged or stale: ignore it.
        let behind = self.seq_nr.wrapping_sub(1).wrapping_sub(h.ack_nr) as usize;
        if behind > self.flight.len() + STALE_ACKS {
            return;
        }
        if self.is_half_open() {
            // Nothing of ours but the STATE went out: its number minus one
            // is the only ack that proves the peer got it.
            if h.ack_nr != self.seq_nr.wrapping_sub(1) {
                return;
            }
            self.state = State::Connected;
        }
        self.reply_micro = (now as u32).wrapping_sub(h.timestamp);
        self.heard = true;
        if self.state == State::SynSent {
            // Only the SYN is out: its answer acknowledges it.
            if h.ack_nr != self.seq_nr.wrapping_sub(1) {
                return;
            }
            self.state = State::Connected;
            // Their next packet carries this sequence number.
            self.ack_nr = h.seq_nr.wrapping_sub(1);
        }
        if h.timestamp_diff != 0 {
            self.cc.on_delay_sample(h.timestamp_diff, now);
        }
        self.peer_window = h.wnd_size as usize;
        if self.peer_window > 0 {
            self.probe_at = None;
        }
        let window_full = self.flight_bytes + self.mss > self.send_window();
        let acked = self.take_acks(h, p.sack, now);
        if let Some(rtt) = acked.newest_rtt {
            self.rtt.sample(rtt);
        }
        if acked.bytes > 0 || acked.newest_rtt.is_some() {
            self.cc.on_ack(acked.bytes, window_full);
            self.timeouts = 0;
            self.rto_at = self.flight.iter().any(|s| !s.resend).then(|| now + self.rtt.rto());
            self.arm_tail_probe(now);
        }
        match h.kind {
            Kind::Data => self.take_data(h.seq_nr, p.payload),
            Kind::Fin => {
                // Only a FIN within reach ends the stream; a forged early one is ignored.
                let ahead = h.seq_nr.wrapping_sub(self.ack_nr);
                if self.fin_seq.is_none() && ahead > 0 && ahead <= MAX_REORDER {
                    self.fin_seq = Some(h.seq_nr);
                }
                self.ack_due = true;
                self.advance();
            }
            Kind::State | Kind::Reset | Kind::Syn => {}
        }
        self.check_done();
    }

    /// Whether `ack_nr` names a packet the peer could answer now: one still
    /// in flight, the last one acknowledged, or (a STATE's number) the next.
    /// A forged RESET must hit these few of 65536 (as libtorrent checks),
    /// not anything within a thousand.
    fn acks_recent(&self, ack_nr: u16) -> bool {
        self.seq_nr.wrapping_sub(ack_nr) as usize <= self.flight.len() + 1
    }

    /// Drops what `ack_nr` and the selective ack cover from `flight`.
    fn take_acks(&mut self, h: &Header, sack: Option<&[u8]>, now: u64) -> Acked {
        let mut acked = Acked { bytes: 0, newest_rtt: None, latest_order: 0 };
        let before = self.flight.len();
        while let Some(front) = self.flight.front() {
            if seq_before(h.ack_nr, front.seq) {
                break;
            }
            let s = self.flight.pop_front().unwrap();
            self.count_acked(&s, now, &mut acked);
        }
        let progressed = self.flight.len() < before;
        if let Some(mask) = sack {
            self.take_sack(h.ack_nr, mask, now, &mut acked);
        }
        self.detect_loss(h, progressed, acked.latest_order, now);
        acked
    }

    fn count_acked(&mut self, s: &Sent, now: u64, acked: &mut Acked) {
        if !s.sacked && !s.resend {
            self.flight_bytes -= s.payload.len();
        }
        if !s.sacked {
            acked.bytes += s.payload.len();
            acked.latest_order = acked.latest_order.max(s.order);
        }
        // Karn: a resent packet's ack could answer either copy.
        if s.transmissions == 1 && !s.sacked {
            acked.newest_rtt = Some(now.saturating_sub(s.sent_at));
        }
    }

    fn take_sack(&mut self, ack_nr: u16, mask: &[u8], now: u64, acked: &mut Acked) {
        let first = ack_nr.wrapping_add(2);
        let mut newly = Vec::new();
        for s in self.flight.iter_mut().filter(|s| !s.sacked) {
            let bit = s.seq.wrapping_sub(first) as usize;
            if bit < mask.len() * 8 && mask[bit / 8] & (1 << (bit % 8)) != 0 {
                newly.push((s.payload.len(), s.resend, s.transmissions, s.sent_at));
                acked.latest_order = acked.latest_order.max(s.order);
                s.sacked = true;
                s.resend = false;
            }
        }
        for (len, resend, transmissions, sent_at) in newly {
            if !resend {
                self.flight_bytes -= len;
            }
            acked.bytes += len;
            if transmissions == 1 {
                acked.newest_rtt = Some(now.saturating_sub(sent_at));
            }
        }
    }

    /// A packet is lost when three packets sent after it were selectively
    /// acknowledged, or one sent after it was acknowledged and it is older
    /// than a round trip and a quarter (RFC 8985's rule; a resend lost again
    /// is found the same way); and the first unacknowledged one when three
    /// duplicate acks came.
    fn detect_loss(&mut self, h: &Header, progressed: bool, delivered: u64, now: u64) {
        if h.kind == Kind::State && h.ack_nr == self.last_ack && !progressed && !self.flight.is_empty() {
            self.dup_acks = self.dup_acks.saturating_add(1);
        } else if h.ack_nr != self.last_ack {
            self.dup_acks = 0;
        }
        self.last_ack = h.ack_nr;
        let (mut lost, mut lost_bytes) = (0, 0);
        let mut mark = |s: &mut Sent| {
            if !s.resend && !s.sacked && s.transmissions > 0 {
                s.resend = true;
                lost += 1;
                lost_bytes += s.payload.len();
            }
        };
        if self.dup_acks >= DUP_ACKS {
            self.dup_acks = 0;
            // A resend waits for selective acks or the timeout, not more duplicates.
            if let Some(front) = self.flight.front_mut().filter(|s| s.transmissions == 1) {
                mark(front);
            }
        }
        let overdue = self.rtt.srtt() + self.rtt.srtt() / 4;
        // The orders of the latest sacked packets seen so far, latest first.
        let mut latest = [0u64; DUP_ACKS as usize];
        for s in self.flight.iter_mut().rev() {
            if s.sacked {
                if s.order > latest[latest.len() - 1] {
                    latest[latest.len() - 1] = s.order;
                    latest.sort_unstable_by(|a, b| b.cmp(a));
                }
            } else if latest[latest.len() - 1] > s.order
                || (s.order < delivered && now.saturating_sub(s.sent_at) > overdue)
            {
                mark(s);
            }
        }
        if lost > 0 {
            self.flight_bytes -= lost_bytes;
            self.tally.losses += lost;
            self.cc.on_loss(now, self.rtt.srtt());
        }
    }

    fn take_data(&mut self, seq: u16, payload: &[u8]) {
        self.ack_due = true;
        let ahead = seq.wrapping_sub(self.ack_nr);
        if self.eof || ahead == 0 || ahead >= 0x8000 || payload.is_empty() {
            return; // a duplicate, or nothing
        }
        if ahead > MAX_REORDER {
            return;
        }
        if ahead == 1 {
            // The packet we wait for goes in before any held out of order.
            while self.readable.len() + self.reorder_bytes + payload.len() > self.recv_limit && self.evict_furthest() {}
        }
        if self.readable.len() + self.reorder_bytes + payload.len() > self.recv_limit {
            return; // beyond what we advertised: theirs to resend
        }
        if ahead == 1 {
            self.readable.extend_from_slice(payload);
            self.ack_nr = seq;
            self.advance();
        } else if !self.reorder.contains_key(&seq) && self.hold(payload.len()) {
            self.reorder_bytes += payload.len();
            self.reorder.insert(seq, payload.to_vec());
        }
    }

    /// Charges a packet of `len` bytes held out of order, if this
    /// connection's share and the socket's budget both have room.
    fn hold(&mut self, len: usize) -> bool {
        let charge = len + REORDER_OVERHEAD;
        if self.held + charge > MAX_REORDER_HELD || !self.budget.take(self.host, charge) {
            return false; // theirs to resend once the gap is filled
        }
        self.held += charge;
        true
    }

    /// Takes packet `seq` out of `reorder`, its charge given back.
    fn unhold(&mut self, seq: u16) -> Option<Vec<u8>> {
        let p = self.reorder.remove(&seq)?;
        self.reorder_bytes -= p.len();
        self.held -= p.len() + REORDER_OVERHEAD;
        self.budget.give(self.host, p.len() + REORDER_OVERHEAD);
        Some(p)
    }

    /// Forgets every packet held out of order, the map's memory too.
    fn drop_reorder(&mut self) {
        self.reorder = HashMap::new();
        self.reorder_bytes = 0;
        self.budget.give(self.host, std::mem::take(&mut self.held));
    }

    /// Drops the out-of-order packet furthest ahead; false if none.
    fn evict_furthest(&mut self) -> bool {
        let ack = self.ack_nr;
        let Some(&seq) = self.reorder.keys().max_by_key(|s| s.wrapping_sub(ack)) else { return false };
        self.unhold(seq).is_some()
    }

    /// Moves packets that are now in order out of `reorder`, and sees the FIN.
    fn advance(&mut self) {
        while let Some(p) = self.unhold(self.ack_nr.wrapping_add(1)) {
            self.readable.extend_from_slice(&p);
            self.ack_nr = self.ack_nr.wrapping_add(1);
        }
        if self.fin_seq == Some(self.ack_nr.wrapping_add(1)) {
            self.ack_nr = self.ack_nr.wrapping_add(1);
            self.eof = true;
            self.drop_reorder();
        }
    }

    /// A closing connection ends once its FIN is acknowledged.
    fn check_done(&mut self) {
        if self.state == (State::Closing { fin_sent: true }) && self.flight.is_empty() {
            self.end(End::Done);
        }
    }

    fn end(&mut self, end: End) {
        self.state = State::Closed(end);
        self.drop_reorder();
        self.flight.clear();
        self.unsent.clear();
        self.flight_bytes = 0;
        self.rto_at = None;
        self.tail = TailProbe::Idle;
    }

    /// Time passed: the tail probe goes out, or a timeout resends what is
    /// unacknowledged.
    pub fn on_timer(&mut self, now: u64) {
        if let State::SynReceived { expires } = self.state {
            if now >= expires {
                self.end(End::TimedOut);
            }
            return;
        }
        if matches!(self.tail, TailProbe::Armed { at } if now >= at) {
            self.tail = TailProbe::Due;
        }
        let Some(at) = self.rto_at else { return };
        if now < at {
            return;
        }
        self.timeouts += 1;
        self.tally.timeouts += 1;
        let syn_gave_up = self.state == State::SynSent && self.timeouts >= SYN_ATTEMPTS;
        let fin_alone = self.state == (State::Closing { fin_sent: true }) && self.flight.len() == 1;
        let fin_gave_up = fin_alone && self.timeouts > FIN_TIMEOUTS;
        if syn_gave_up || fin_gave_up || self.timeouts > MAX_TIMEOUTS {
            self.end(End::TimedOut);
            return;
        }
        self.rtt.back_off();
        self.cc.on_timeout();
        for s in self.flight.iter_mut().filter(|s| !s.sacked && !s.resend) {
            s.resend = true;
            self.flight_bytes -= s.payload.len();
        }
        self.rto_at = Some(now + self.rtt.rto());
    }

    /// Hands each datagram due now to `emit`: resends, new data, the FIN,
    /// and an ack if one is owed and nothing else carried it.
    pub fn transmit(&mut self, now: u64, scratch: &mut Vec<u8>, mut emit: impl FnMut(Datagram<'_>)) {
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        let mut sent_any = self.send_tail_probe(now, scratch, &mut emit);
        sent_any |= self.resend_lost(now, scratch, &mut emit);
        while !self.unsent.is_empty() && self.state != State::SynSent && self.flight.len() < MAX_FLIGHT {
            let len = self.unsent.next_len();
            if !self.fits(len, now) {
                break;
            }
            let payload = self.unsent.pop().expect("not empty");
            let seq = self.seq_nr;
            self.seq_nr = self.seq_nr.wrapping_add(1);
            self.flight.push_back(Sent {
                seq,
                kind: Kind::Data,
                payload,
                sent_at: now,
                order: 0,
                transmissions: 0,
                sacked: false,
                resend: false,
            });
            self.flight_bytes += len;
            self.send_packet(self.flight.len() - 1, now, scratch, &mut emit);
            sent_any = true;
        }
        if self.state == (State::Closing { fin_sent: false }) && self.unsent.is_empty() {
            self.state = State::Closing { fin_sent: true };
            self.queue_control(Kind::Fin);
            sent_any |= self.resend_lost(now, scratch, &mut emit);
        }
        if self.ack_due && !sent_any {
            self.write_state(now, scratch);
            emit(Datagram { head: scratch, payload: &Bytes::new() });
            sent_any = true;
        }
        self.ack_due = false;
        if sent_any {
            self.advertised = self.window();
        }
    }

    /// The first unacknowledged packet again, once the tail probe fired:
    /// a copy, so it neither counts in flight twice nor touches the window.
    fn send_tail_probe(&mut self, now: u64, scratch: &mut Vec<u8>, emit: &mut impl FnMut(Datagram<'_>)) -> bool {
        if self.tail != TailProbe::Due {
            return false;
        }
        self.tail = TailProbe::Idle;
        let Some(i) = self.flight.iter().position(|s| !s.sacked && !s.resend && s.transmissions > 0) else {
            return false;
        };
        self.tally.probes += 1;
        self.send_packet(i, now, scratch, emit);
        true
    }

    /// Sends the packets marked for resending, as the window allows.
    fn resend_lost(&mut self, now: u64, scratch: &mut Vec<u8>, emit: &mut impl FnMut(Datagram<'_>)) -> bool {
        let mut sent = false;
        for i in 0..self.flight.len() {
            let s = &self.flight[i];
            if !s.resend || s.sacked {
                continue;
            }
            let len = s.payload.len();
            if !self.fits(len, now) {
                break;
            }
            self.flight[i].resend = false;
            self.flight_bytes += self.flight[i].payload.len();
            self.send_packet(i, now, scratch, emit);
            sent = true;
        }
        sent
    }

    fn send_packet(&mut self, i: usize, now: u64, scratch: &mut Vec<u8>, emit: &mut impl FnMut(Datagram<'_>)) {
        let header = self.header(self.flight[i].kind, self.flight[i].seq, now);
        let s = &mut self.flight[i];
        s.sent_at = now;
        s.transmissions += 1;
        self.tally.sent += 1;
        self.tally.resent += u64::from(s.transmissions > 1);
        s.order = self.tally.sent;
        let first_copy = s.transmissions == 1;
        packet::write_header(scratch, &header, None);
        emit(Datagram { head: scratch, payload: &s.payload });
        // New data arms the tail probe; a resend, the probe included, does
        // not: one probe per tail, then only acks or the timeout re-arm it.
        if first_copy && header.kind != Kind::Syn {
            self.arm_tail_probe(now);
        }
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rtt.rto());
        }
    }

    fn header(&self, kind: Kind, seq_nr: u16, now: u64) -> Header {
        Header {
            kind,
            conn_id: if kind == Kind::Syn { self.recv_id } else { self.send_id },
            timestamp: now as u32,
            timestamp_diff: self.reply_micro,
            wnd_size: self.window() as u32,
            seq_nr,
            ack_nr: self.ack_nr,
        }
    }

    /// A STATE packet: our next sequence number, the ack, and which
    /// packets past the gap we hold.
    fn write_state(&self, now: u64, scratch: &mut Vec<u8>) {
        let header = self.header(Kind::State, self.seq_nr, now);
        let mut mask = [0u8; MAX_SACK_BYTES];
        let mut used = 0;
        let first = self.ack_nr.wrapping_add(2);
        for seq in self.reorder.keys() {
            let bit = seq.wrapping_sub(first) as usize;
            if bit < MAX_SACK_BYTES * 8 {
                mask[bit / 8] |= 1 << (bit % 8);
                used = used.max(bit / 8 + 1);
            }
        }
        // As long as the furthest packet held needs, in whole 4-byte words.
        let mask = &mask[..used.div_ceil(4) * 4];
        packet::write_header(scratch, &header, (!mask.is_empty()).then_some(mask));
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.budget.give(self.host, self.held);
    }
}

/// Our STATE answering a SYN for which we keep nothing yet: `seq_nr` is
/// its cookie, what [`Conn::accept`] gets once the peer acknowledges it.
pub fn syn_answer(syn: &Header, seq_nr: u16, now: u64, scratch: &mut Vec<u8>) {
    let reply = Header {
        kind: Kind::State,
        conn_id: syn.conn_id,
        timestamp: now as u32,
        timestamp_diff: (now as u32).wrapping_sub(syn.timestamp),
        wnd_size: FIRST_RECV_BUF as u32,
        seq_nr,
        ack_nr: syn.seq_nr,
    };
    packet::write_header(scratch, &reply, None);
}

/// A RESET answering a packet for no connection of ours.
pub fn reset_for(h: &Header, now: u64, scratch: &mut Vec<u8>) {
    let reply = Header {
        kind: Kind::Reset,
        conn_id: h.conn_id,
        timestamp: now as u32,
        timestamp_diff: 0,
        wnd_size: 0,
        seq_nr: rand::random(),
        ack_nr: h.seq_nr,
    };
    packet::write_header(scratch, &reply, None);
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;

#[doc(hidden)]
#[path = "conn_fuzz.rs"]
pub mod fuzz;
