//! Two connections talking through a simulated network: a clock, a delay,
//! and a rule for which datagrams are lost. No sockets, no sleeps.

use super::*;
use crate::utp::packet::parse;
use std::net::IpAddr;

const MSS: usize = 1400;

/// A datagram on its way: when it lands, and to whom (true: to b).
struct InFlight {
    at: u64,
    to_b: bool,
    bytes: Vec<u8>,
}

/// Whether datagram number n, sent at a time, is lost.
type LossRule = Box<dyn FnMut(usize, u64, &[u8]) -> bool>;

struct Net {
    a: Conn,
    b: Option<Conn>,
    now: u64,
    wire: Vec<InFlight>,
    delay: u64,
    sent: usize,
    lose: LossRule,
    scratch: Vec<u8>,
}

impl Net {
    fn new(lose: impl FnMut(usize, u64, &[u8]) -> bool + 'static) -> Net {
        let mut a = Conn::connect(1000, 1, MSS);
        a.open_window(); // dialled for a torrent of ours
        Net {
            a,
            b: None,
            now: 1_000_000,
            wire: Vec::new(),
            delay: 5_000,
            sent: 0,
            lose: Box::new(lose),
            scratch: Vec::new(),
        }
    }

    fn flush(&mut self) {
        let mut out = Vec::new();
        self.a.transmit(self.now, &mut self.scratch, |d| out.push((true, d.to_vec())));
        if let Some(b) = &mut self.b {
            b.transmit(self.now, &mut self.scratch, |d| out.push((false, d.to_vec())));
        }
        for (to_b, bytes) in out {
            let n = self.sent;
            self.sent += 1;
            if !(self.lose)(n, self.now, &bytes) {
                self.wire.push(InFlight { at: self.now + self.delay, to_b, bytes });
            }
        }
    }

    /// Runs to the next event (a delivery or a timer); false when none is left.
    fn step(&mut self) -> bool {
        self.flush();
        let timers = [self.a.deadline(), self.b.as_ref().and_then(Conn::deadline)];
        let next = self.wire.iter().map(|d| d.at).chain(timers.into_iter().flatten()).min();
        let Some(next) = next else { return false };
        self.now = self.now.max(next);
        let due: Vec<InFlight> = {
            let (due, rest) = std::mem::take(&mut self.wire).into_iter().partition(|d| d.at <= self.now);
            self.wire = rest;
            due
        };
        for d in due {
            let p = parse(&d.bytes).unwrap();
            if d.to_b {
                match &mut self.b {
                    Some(b) => b.on_packet(&p, self.now),
                    None if p.header.kind == Kind::Syn => {
                        // Accepted, and its handshake matched at once.
                        let mut b = Conn::accept(&p.header, 30_000, MSS, self.now);
                        b.open_window();
                        self.b = Some(b);
                    }
                    None => {}
                }
            } else {
                self.a.on_packet(&p, self.now);
            }
        }
        self.a.on_timer(self.now);
        if let Some(b) = &mut self.b {
            b.on_timer(self.now);
        }
        true
    }

    fn b(&mut self) -> &mut Conn {
        self.b.as_mut().unwrap()
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Sends `len` bytes from a to b and `back` from b to a; returns what each got.
fn exchange(net: &mut Net, len: usize, back: usize) -> (Vec<u8>, Vec<u8>) {
    let (to_b, to_a) = (data(len), data(back));
    let (mut at_a, mut at_b) = (0, 0);
    let (mut got_b, mut got_a) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..2_000_000 {
        at_a += net.a.write(&to_b[at_a..]);
        if let Some(b) = &mut net.b {
            at_b += b.write(&to_a[at_b..]);
            let n = b.read(&mut buf);
            got_b.extend_from_slice(&buf[..n]);
        }
        let n = net.a.read(&mut buf);
        got_a.extend_from_slice(&buf[..n]);
        if got_b.len() == len && got_a.len() == back {
            break;
        }
        let readable = net.a.has_readable() || net.b.as_ref().is_some_and(Conn::has_readable);
        if !net.step() && !readable {
            for c in [Some(&net.a), net.b.as_ref()].into_iter().flatten() {
                eprintln!(
                    "stalled: {:?} unsent {} flight {} flight_bytes {} cwnd {} peer {} rto {:?} readable {} reorder {} seq {} ack {}",
                    c.state, c.unsent.len(), c.flight.len(), c.flight_bytes, c.cc.window(), c.peer_window, c.rto_at,
                    c.readable.len(), c.reorder.len(), c.seq_nr, c.ack_nr
                );
            }
            break;
        }
    }
    (got_b, got_a)
}

#[test]
fn a_handshake_then_bytes_both_ways() {
    let mut net = Net::new(|_, _, _| false);
    let (b, a) = exchange(&mut net, 3_000_000, 200_000);
    assert_eq!(
        (b.len(), a.len()),
        (3_000_000, 200_000),
        "{:?} {:?}",
        net.a.state(),
        net.b.as_ref().map(|b| b.state().clone())
    );
    assert!(b == data(3_000_000) && a == data(200_000));
    assert_eq!(*net.a.state(), State::Connected);
    // The handshake as libtorrent expects it: a SYN on our receive id with
    // the sequence number given, answered on that id; data on the id after it.
    let mut c = Conn::connect(500, 1, MSS);
    let mut syn = Vec::new();
    c.transmit(0, &mut Vec::new(), |d| syn = d.to_vec());
    let h = parse(&syn).unwrap().header;
    assert_eq!((h.kind, h.conn_id, h.seq_nr), (Kind::Syn, 500, 1));
    let mut acceptor = Conn::accept(&h, 7000, MSS, 0);
    let mut state = Vec::new();
    acceptor.transmit(10, &mut Vec::new(), |d| state = d.to_vec());
    let s = parse(&state).unwrap().header;
    assert_eq!((s.kind, s.conn_id, s.seq_nr, s.ack_nr), (Kind::State, 500, 7000, 1));
    c.on_packet(&parse(&state).unwrap(), 20);
    c.write(b"hello");
    let mut first = Vec::new();
    c.transmit(30, &mut Vec::new(), |d| first = d.to_vec());
    let d = parse(&first).unwrap();
    assert_eq!((d.header.kind, d.header.conn_id, d.header.seq_nr, d.header.ack_nr), (Kind::Data, 501, 2, 6999));
    assert_eq!(d.payload, b"hello");
}

#[test]
fn losses_and_a_lost_handshake_are_recovered() {
    // Every 13th datagram and the first STATE are lost.
    let mut net = Net::new(|n, _, d| n % 13 == 5 || (n == 1 && parse(d).unwrap().header.kind == Kind::State));
    let (b, a) = exchange(&mut net, 2_000_000, 300_000);
    assert_eq!(b.len(), 2_000_000);
    assert!(b == data(2_000_000) && a == data(300_000));
}

#[test]
fn a_burst_of_losses_is_recovered_by_the_timeout() {
    // Everything sent for 300 ms from the 40th datagram on is lost.
    let mut from = None;
    let mut net = Net::new(move |n, now, _| {
        if n == 40 {
            from = Some(now);
        }
        from.is_some_and(|at| now < at + 300_000)
    });
    let (b, _) = exchange(&mut net, 1_000_000, 0);
    assert!(b == data(1_000_000));
}

#[test]
fn an_unanswered_syn_gives_up_after_three() {
    let mut net = Net::new(|_, _, _| true);
    let start = net.now;
    while net.step() {}
    assert_eq!(*net.a.state(), State::Closed(End::TimedOut));
    assert_eq!(net.sent, 3);
    assert!(net.now - start >= 3_000_000 && net.now - start < 10_000_000, "{}", net.now - start);
}

#[test]
fn a_silent_peer_times_the_connection_out() {
    let mut net = Net::new(|_, _, _| false);
    exchange(&mut net, 10_000, 0);
    net.lose = Box::new(|_, _, _| true);
    net.a.write(b"anyone there?");
    while net.step() && !matches!(net.a.state(), State::Closed(_)) {}
    assert_eq!(*net.a.state(), State::Closed(End::TimedOut));
    let t = net.a.tally();
    assert_eq!(t.probes, 1, "one tail probe, not one every two round trips: {t:?}");
}

#[test]
fn close_sends_fin_after_the_data_and_both_ends_finish() {
    let mut net = Net::new(|n, _, _| n % 9 == 4);
    exchange(&mut net, 100, 0);
    net.a.write(&data(50_000));
    net.a.close();
    assert_eq!(net.a.write(b"late"), 0, "closed for writing");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = net.b().read(&mut buf);
        got.extend_from_slice(&buf[..n]);
        if net.b().at_eof() && matches!(net.a.state(), State::Closed(_)) {
            break;
        }
        if !net.step() && !net.b().has_readable() {
            break;
        }
    }
    assert!(got == data(50_000), "{} bytes", got.len());
    assert!(net.b().at_eof());
    assert_eq!(*net.a.state(), State::Closed(End::Done));
}

#[test]
fn a_reset_ends_it_and_forged_acks_are_ignored() {
    let mut net = Net::new(|_, _, _| false);
    exchange(&mut net, 1000, 0);
    let mut h = Header {
        kind: Kind::State,
        conn_id: 1001,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: 0,
        seq_nr: 0,
        ack_nr: 40_000,
    };
    let mut d = Vec::new();
    packet::write_header(&mut d, &h, None);
    net.a.on_packet(&parse(&d).unwrap(), net.now);
    assert_eq!(*net.a.state(), State::Connected, "an ack from the future changes nothing");
    h.kind = Kind::Reset;
    packet::write_header(&mut d, &h, None);
    net.a.on_packet(&parse(&d).unwrap(), net.now);
    assert_eq!(*net.a.state(), State::Connected, "nor does a reset carrying one");
    h.ack_nr = 2;
    packet::write_header(&mut d, &h, None);
    net.a.on_packet(&parse(&d).unwrap(), net.now);
    assert_eq!(*net.a.state(), State::Closed(End::Reset));
}

#[test]
fn a_peer_ignoring_our_window_cannot_grow_our_buffers() {
    let mut net = Net::new(|_, _, _| false);
    exchange(&mut net, 10, 0);
    let ack = net.a.ack_nr;
    // A flood of in-order and out-of-order packets, never read.
    let mut d = Vec::new();
    for i in 0..3000u16 {
        let h = Header {
            kind: Kind::Data,
            conn_id: 1000,
            timestamp: 0,
            timestamp_diff: 0,
            wnd_size: 1 << 20,
            seq_nr: ack.wrapping_add(1 + i * 3 % 2000),
            ack_nr: net.a.seq_nr.wrapping_sub(1),
        };
        packet::write_header(&mut d, &h, None);
        d.extend_from_slice(&[7u8; 1400]);
        net.a.on_packet(&parse(&d).unwrap(), net.now);
        assert!(net.a.held <= MAX_REORDER_HELD);
    }
    // Then in order only, until the buffer is full.
    for _ in 0..1000 {
        let mut h = parse(&d).unwrap().header;
        h.seq_nr = net.a.ack_nr.wrapping_add(1);
        packet::write_header(&mut d, &h, None);
        d.extend_from_slice(&[7u8; 1400]);
        net.a.on_packet(&parse(&d).unwrap(), net.now);
    }
    assert!(net.a.readable.len() + net.a.reorder_bytes <= RECV_BUF);
    assert!(net.a.reorder.len() <= MAX_REORDER as usize);
    let mut state = Vec::new();
    net.a.transmit(net.now, &mut Vec::new(), |p| state = p.to_vec());
    assert!(parse(&state).unwrap().header.wnd_size < 1400, "the window we advertise is closed");
}

#[test]
fn the_window_caps_what_is_in_flight() {
    let mut c = Conn::connect(1, 1, MSS);
    c.transmit(0, &mut Vec::new(), |_| {});
    let state = Header {
        kind: Kind::State,
        conn_id: 1,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: 5000,
        seq_nr: 100,
        ack_nr: 1,
    };
    let mut d = Vec::new();
    packet::write_header(&mut d, &state, None);
    c.on_packet(&parse(&d).unwrap(), 10);
    assert_eq!(c.write(&vec![0; SEND_BUF + 10]), SEND_BUF, "the send buffer is bounded");
    let mut bytes = 0;
    c.transmit(20, &mut Vec::new(), |p| bytes += p.len() - packet::HEADER_LEN);
    assert!((2800..=5000).contains(&bytes), "{bytes}");
}

/// A one-way bottleneck from a to b: `rate` bytes a second, a FIFO buffer
/// of `buffer` bytes (more is dropped), then `base` µs of propagation. The
/// way back is uncongested. Returns the queueing delay every sent datagram
/// met, in µs, and the bytes b received, over `secs` seconds of upload.
fn upload_through_a_bottleneck(rate: u64, buffer: u64, base: u64, secs: u64) -> (Vec<u64>, usize) {
    let mut net = Net::new(|_, _, _| false);
    net.delay = base;
    let (mut link_free_at, mut queued_delays) = (0u64, Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    let end = net.now + secs * 1_000_000;
    let data = vec![7u8; 64 * 1024];
    while net.now < end {
        net.a.write(&data);
        if let Some(b) = &mut net.b {
            received += b.read(&mut buf);
        }
        // Send through the link model instead of `flush`'s fixed delay.
        let mut out = Vec::new();
        net.a.transmit(net.now, &mut net.scratch, |d| out.push(d.to_vec()));
        for bytes in out {
            let start = link_free_at.max(net.now);
            let backlog = (start - net.now) * rate / 1_000_000;
            if backlog + bytes.len() as u64 > buffer {
                continue; // the buffer is full: dropped
            }
            queued_delays.push(start - net.now);
            link_free_at = start + bytes.len() as u64 * 1_000_000 / rate;
            net.wire.push(InFlight { at: link_free_at + base, to_b: true, bytes });
        }
        if !net.step() {
            break;
        }
    }
    (queued_delays, received)
}

#[test]
fn ledbat_keeps_a_bottleneck_queue_near_the_target_and_the_link_busy() {
    // 1 MB/s, a 1 MB buffer (a second of queue, as cheap home routers
    // have), 20 ms each way.
    let (rate, secs) = (1_000_000, 60);
    let (delays, received) = upload_through_a_bottleneck(rate, 1_000_000, 20_000, secs);
    let settled = &delays[delays.len() / 2..];
    let mean = settled.iter().sum::<u64>() / settled.len() as u64;
    let worst = *settled.iter().max().unwrap();
    // The queue stays near 100 ms, far below the second the buffer allows.
    assert!((50_000..=150_000).contains(&mean), "mean queueing delay {mean} µs");
    assert!(worst < 300_000, "worst queueing delay {worst} µs");
    // And the link is kept busy.
    let used = received as f64 / (rate * secs) as f64;
    eprintln!("queueing delay: mean {mean} µs, worst {worst} µs; link use {used:.3}");
    assert!(used > 0.85, "link use {used:.2}");
}

/// What `flight_bytes` must equal: the payload believed in the network.
fn in_network(c: &Conn) -> usize {
    c.flight.iter().filter(|s| !s.sacked && !s.resend).map(|s| s.payload.len()).sum()
}

#[test]
fn hostile_packets_never_break_the_books() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut net = Net::new(|_, _, _| false);
        exchange(&mut net, 20_000, 0);
        let mut d = Vec::new();
        for i in 0..400 {
            net.a.write(&[1u8; 3000]);
            net.a.transmit(net.now, &mut Vec::new(), |_| {});
            let r = next();
            let kind = [Kind::Data, Kind::Fin, Kind::State, Kind::Reset, Kind::Syn][(r % 5) as usize];
            // Acks and sequence numbers near the live range, and anywhere.
            let near = |base: u16, r: u64| base.wrapping_add((r % 64) as u16).wrapping_sub(32);
            let h = Header {
                kind,
                conn_id: 1000,
                timestamp: (r >> 8) as u32,
                timestamp_diff: (r >> 16) as u32 % 300_000,
                wnd_size: (r >> 24) as u32 % 2_000_000,
                seq_nr: if r & 1 << 40 != 0 { near(net.a.ack_nr, r >> 41) } else { (r >> 41) as u16 },
                ack_nr: if r & 1 << 50 != 0 { near(net.a.seq_nr, r >> 51) } else { (r >> 51) as u16 },
            };
            let sack = ((r >> 20) as u32).to_le_bytes();
            packet::write_header(&mut d, &h, (r & 1 << 60 != 0).then_some(&sack[..]));
            d.extend(std::iter::repeat_n(9u8, (r >> 30) as usize % 1500));
            net.a.on_packet(&parse(&d).unwrap(), net.now);
            net.now += (r >> 5) % 50_000;
            net.a.on_timer(net.now);
            assert_eq!(net.a.flight_bytes, in_network(&net.a), "round {round}, packet {i}");
            assert!(net.a.readable.len() + net.a.reorder_bytes <= RECV_BUF);
            if matches!(net.a.state(), State::Closed(_)) {
                break;
            }
        }
    }
}

#[test]
fn a_half_open_connection_closes_at_once_and_an_unanswered_fin_gives_up() {
    // Accepted, then nothing but the SYN: closing frees it without a FIN.
    let mut c = Conn::connect(5, 1, MSS);
    let mut syn = Vec::new();
    c.transmit(0, &mut Vec::new(), |d| syn = d.to_vec());
    let mut accepted = Conn::accept(&parse(&syn).unwrap().header, 100, MSS, 0);
    accepted.close();
    assert_eq!(*accepted.state(), State::Closed(End::Done));
    let mut sent = 0;
    accepted.transmit(1, &mut Vec::new(), |_| sent += 1);
    assert_eq!(sent, 0);
    // A peer that goes silent while we close: a few FINs, then it ends.
    let mut net = Net::new(|_, _, _| false);
    exchange(&mut net, 1000, 1000);
    while !net.a.flight.is_empty() && net.step() {}
    net.lose = Box::new(|_, _, _| true);
    net.a.close();
    let start = net.now;
    while net.step() && !matches!(net.a.state(), State::Closed(_)) {}
    assert_eq!(*net.a.state(), State::Closed(End::TimedOut));
    assert!(net.now - start < 5_000_000, "gave up after {} µs", net.now - start);
}

/// A connected `Conn` (we dialled) and a header from its peer to build on.
fn connected_with(peer_window: u32) -> (Conn, Header) {
    let mut c = Conn::connect(1, 1, MSS);
    c.transmit(0, &mut Vec::new(), |_| {});
    let h = Header {
        kind: Kind::State,
        conn_id: 1,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: peer_window,
        seq_nr: 100,
        ack_nr: 1,
    };
    let mut d = Vec::new();
    packet::write_header(&mut d, &h, None);
    c.on_packet(&parse(&d).unwrap(), 10);
    (c, h)
}

fn feed(c: &mut Conn, h: &Header, sack: Option<&[u8]>, payload: &[u8], now: u64) {
    let mut d = Vec::new();
    packet::write_header(&mut d, h, sack);
    d.extend_from_slice(payload);
    c.on_packet(&parse(&d).unwrap(), now);
}

#[test]
fn a_closed_window_gets_only_a_probe_now_and_then() {
    let (mut c, _) = connected_with(0);
    c.write(&[1; 100_000]);
    let mut sent = 0;
    c.transmit(20, &mut Vec::new(), |_| sent += 1);
    assert_eq!(sent, 0, "nothing while the peer has no room");
    c.transmit(20 + PROBE_US, &mut Vec::new(), |_| sent += 1);
    assert_eq!(sent, 1, "one probe once the wait is over");
}

#[test]
fn selective_acks_alone_cannot_grow_what_is_in_flight() {
    let (mut c, mut h) = connected_with(1 << 30);
    for round in 0..200u64 {
        c.write(&vec![1; SEND_BUF]);
        c.transmit(100 + round, &mut Vec::new(), |_| {});
        // Everything but the first packet, again and again.
        h.ack_nr = 1;
        feed(&mut c, &h, Some(&[0xff; 4]), &[], 100 + round);
        assert!(c.flight.len() <= MAX_FLIGHT, "{} in flight", c.flight.len());
    }
}

#[test]
fn unread_and_abandoned_bytes_are_bounded_and_early_fins_ignored() {
    let (mut c, mut h) = connected_with(1 << 20);
    h.kind = Kind::Data;
    for i in 0..200u16 {
        h.seq_nr = 100 + i;
        feed(&mut c, &h, None, &[5; 1000], 20);
    }
    assert_eq!(c.readable.len(), FIRST_RECV_BUF / 1000 * 1000, "a stranger fills 64 KiB");
    let mut buf = vec![0u8; 1000];
    assert_eq!(c.read(&mut buf), 1000);
    c.open_window();
    for _ in 0..200 {
        h.seq_nr = c.ack_nr.wrapping_add(1);
        feed(&mut c, &h, None, &[5; 1000], 20);
    }
    assert!(c.readable.len() > FIRST_RECV_BUF, "a matched peer gets the whole buffer");
    // A FIN far ahead is not the end.
    h.kind = Kind::Fin;
    h.seq_nr = c.ack_nr.wrapping_add(5000);
    feed(&mut c, &h, None, &[], 30);
    assert_eq!(c.fin_seq, None);
    // Once the application is gone, nothing more is held.
    c.close();
    h.kind = Kind::Data;
    h.seq_nr = c.ack_nr.wrapping_add(1);
    feed(&mut c, &h, None, &[5; 1000], 40);
    assert_eq!(c.readable.len() + c.reorder_bytes, 0);
}

/// The last packets of a burst lost, nothing sent after them: the tail
/// probe finds them within a few round trips, not after the half-second
/// timeout, and the window is not reset.
#[test]
fn a_lost_tail_is_found_by_the_probe_not_the_timeout() {
    let mut net = Net::new(|_, _, _| false);
    exchange(&mut net, 10_000, 0);
    // Of the burst the write lets out, all but the first packet is lost.
    let (first, start) = (net.sent, net.now);
    net.lose = Box::new(move |n, now, d| now == start && n > first && parse(d).unwrap().header.kind == Kind::Data);
    let wanted = data(5 * MSS); // within the window: one burst
    net.a.write(&wanted);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < wanted.len() && net.step() {
        while net.b().has_readable() {
            let n = net.b().read(&mut buf);
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(got == wanted, "{} bytes", got.len());
    let t = net.a.tally();
    assert_eq!(t.timeouts, 0, "{t:?}");
    assert!(t.probes >= 1, "{t:?}");
    assert!(net.now - start < 100_000, "took {} us", net.now - start);
}

/// A receiver holding packets far past a gap says so: the selective ack
/// grows to cover them (not just the first 32), so the sender resends
/// only what is missing.
#[test]
fn the_selective_ack_covers_every_packet_held_past_a_gap() {
    let (mut c, mut h) = connected_with(1 << 20);
    h.kind = Kind::Data;
    h.ack_nr = 0; // nothing of ours to ack
    for seq in 101..=200 {
        h.seq_nr = seq; // 100, the next in order, never comes
        feed(&mut c, &h, None, b"x", 20);
    }
    let mut state = Vec::new();
    c.transmit(30, &mut Vec::new(), |d| state = d.to_vec());
    let p = parse(&state).unwrap();
    assert_eq!((p.header.kind, p.header.ack_nr), (Kind::State, 99));
    let sack = p.sack.expect("a selective ack");
    assert_eq!(sack.len(), 16, "100 packets, in whole 32-bit words");
    let held: Vec<usize> = (0..sack.len() * 8).filter(|b| sack[b / 8] & (1 << (b % 8)) != 0).collect();
    assert_eq!(held, (0..100).collect::<Vec<_>>());
}

/// A forged RESET must hit the one ack that we could have drawn from the
/// peer lately: our last sequence numbers, not a thousand behind them.
#[test]
fn a_reset_counts_only_with_an_ack_of_what_we_sent_lately() {
    let mut c = Conn::connect(9, 65_000, MSS);
    let mut syn = Vec::new();
    c.transmit(0, &mut Vec::new(), |d| syn = d.to_vec());
    assert_eq!(parse(&syn).unwrap().header.seq_nr, 65_000, "the SYN carries the sequence number given");
    let mut h = Header {
        kind: Kind::State,
        conn_id: 9,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: 1 << 20,
        seq_nr: 100,
        ack_nr: 64_999,
    };
    feed(&mut c, &h, None, &[], 10);
    assert_eq!(*c.state(), State::SynSent, "an answer to a SYN we did not send");
    h.ack_nr = 65_000;
    feed(&mut c, &h, None, &[], 10);
    assert_eq!(*c.state(), State::Connected);
    // A thousand packets out and acknowledged, across the wrap.
    for i in 0..1000u64 {
        c.write(&[1; 1000]);
        c.transmit(20 + i, &mut Vec::new(), |_| {});
        h.ack_nr = c.seq_nr.wrapping_sub(1);
        feed(&mut c, &h, None, &[], 20 + i);
    }
    assert!(c.flight.is_empty());
    h.kind = Kind::Reset;
    for behind in [2u16, 10, 100, 1000] {
        h.ack_nr = c.seq_nr.wrapping_sub(behind);
        feed(&mut c, &h, None, &[], 2000);
        assert_eq!(*c.state(), State::Connected, "a reset acking a packet {behind} back");
    }
    h.ack_nr = c.seq_nr.wrapping_add(1);
    feed(&mut c, &h, None, &[], 2000);
    assert_eq!(*c.state(), State::Connected, "a reset acking a packet not sent yet");
    h.ack_nr = c.seq_nr.wrapping_sub(1);
    feed(&mut c, &h, None, &[], 2000);
    assert_eq!(*c.state(), State::Closed(End::Reset), "a reset acking our last packet");
}

/// Issue #23 (8): the listener reads the 20-byte header before it knows
/// the torrent; that read alone must not open the 1 MiB window.
#[test]
fn a_stranger_holds_the_small_window_until_its_handshake_matches() {
    let (mut c, mut h) = connected_with(1 << 20);
    h.kind = Kind::Data;
    h.ack_nr = 0;
    let flood = |c: &mut Conn, h: &mut Header| {
        for i in 0..1500u16 {
            // In order, then far ahead behind a gap.
            h.seq_nr = if i % 2 == 0 { c.ack_nr.wrapping_add(1) } else { c.ack_nr.wrapping_add(2 + i % 700) };
            feed(c, h, None, &[5; 1400], 20);
        }
    };
    flood(&mut c, &mut h);
    let mut header = [0u8; 20];
    assert_eq!(c.read(&mut header), 20, "the listener reads the handshake's start");
    flood(&mut c, &mut h);
    assert!(
        c.readable.len() + c.reorder_bytes <= FIRST_RECV_BUF,
        "{} + {} bytes held for a stranger",
        c.readable.len(),
        c.reorder_bytes
    );
    c.open_window();
    flood(&mut c, &mut h);
    assert!(c.readable.len() > FIRST_RECV_BUF, "a matched peer gets the whole buffer");
}

/// What a connection's reorder buffer costs, as `budget.rs` counts it.
fn charge(c: &Conn) -> usize {
    c.reorder_bytes + c.reorder.len() * REORDER_OVERHEAD
}

/// A connection from `host`, matched to a torrent, that was sent 1100
/// packets of `len` bytes behind a gap it never filled.
fn parking(budget: &Arc<Budget>, host: IpAddr, len: usize) -> (Conn, Header) {
    let (c, mut h) = connected_with(1 << 20);
    let mut c = c.with_budget(budget.clone(), host);
    // A byte read, as the peer code does, and the torrent matched.
    h.kind = Kind::Data;
    h.ack_nr = 0;
    h.seq_nr = c.ack_nr.wrapping_add(1);
    feed(&mut c, &h, None, b"x", 20);
    assert_eq!(c.read(&mut [0u8; 1]), 1);
    c.open_window();
    // Full packets, or one byte each (which cost more than their byte).
    for i in 0..1100u16 {
        h.seq_nr = c.ack_nr.wrapping_add(2 + i);
        feed(&mut c, &h, None, &vec![5; len], 20);
    }
    (c, h)
}

/// Issue #23 review (3): one host with its 64 connections (across several
/// torrents) parking data behind gaps takes at most its share of the
/// socket's budget; a peer on another host still holds out-of-order data.
#[test]
fn one_host_cannot_drain_the_reorder_budget() {
    let budget = Budget::new(REORDER_BUDGET);
    let attacker = IpAddr::from([10, 9, 9, 9]);
    let flood: Vec<_> = (0..64).map(|_| parking(&budget, attacker, 1400)).collect();
    let held: usize = flood.iter().map(|(c, _)| charge(c)).sum();
    assert!(held <= REORDER_BUDGET / HOST_SHARE, "one host holds {held} of {REORDER_BUDGET}");
    for n in 0..8u8 {
        let (honest, _) = parking(&budget, IpAddr::from([10, 1, 1, n]), 1400);
        assert!(charge(&honest) > MAX_REORDER_HELD / 2, "an honest peer holds {}", charge(&honest));
    }
    drop(flood);
    assert_eq!(budget.used(), 0);
}

/// Issue #23 (8): peers that park data behind a gap they never fill hold
/// at most their share each and the socket's budget all together, and
/// give it back when the connection closes, ends or goes.
#[test]
fn out_of_order_bytes_are_bounded_per_connection_and_in_total_and_freed() {
    let budget = Budget::new(REORDER_BUDGET);
    // Each from its own host: the per-host share is tested below.
    let mut conns: Vec<(Conn, Header)> =
        (0..96u8).map(|n| parking(&budget, IpAddr::from([10, 0, 0, n]), if n % 4 == 0 { 1 } else { 1400 })).collect();
    for (c, _) in &conns {
        assert!(charge(c) <= MAX_REORDER_HELD, "one connection holds {}", charge(c));
    }
    let total: usize = conns.iter().map(|(c, _)| charge(c)).sum();
    assert!(total <= REORDER_BUDGET, "all together hold {total}");
    assert_eq!(budget.used(), total, "the budget knows what is held");
    assert!(total > REORDER_BUDGET - MAX_REORDER_HELD, "the budget is used, not refused early: {total}");
    // The gap filled: what was held moves on and is given back.
    let (c, h) = &mut conns[1];
    let (before, held) = (budget.used(), charge(c));
    h.seq_nr = c.ack_nr.wrapping_add(1);
    feed(c, h, None, &[5; 1400], 30);
    assert!(c.reorder.is_empty() && c.readable.len() > held / 2);
    assert_eq!(budget.used(), before - held);
    conns[2].0.close();
    conns[3].0.abort();
    assert_eq!(budget.used(), conns.iter().map(|(c, _)| charge(c)).sum::<usize>());
    assert_eq!((charge(&conns[2].0), charge(&conns[3].0)), (0, 0), "closed or ended, nothing held");
    drop(conns);
    assert_eq!(budget.used(), 0, "dropped, everything given back");
}

/// Issue #23 (9): a SYN opens a half-open connection that holds nothing
/// until the peer's first packet acknowledges our STATE's random number
/// (what a spoofed source never sees), and that expires if none comes.
#[test]
fn a_syn_opens_a_half_open_connection_until_the_peer_shows_it_heard_us() {
    let syn = Header {
        kind: Kind::Syn,
        conn_id: 77,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: 1 << 20,
        seq_nr: 500,
        ack_nr: 0,
    };
    let mut c = Conn::accept(&syn, 40_000, MSS, 0);
    assert!(c.is_half_open());
    assert_eq!(c.deadline(), Some(HALF_OPEN_US));
    let mut h = Header { kind: Kind::Data, conn_id: 78, seq_nr: 501, ..syn };
    for ack in [0, 39_998, 40_000, 12_345] {
        h.ack_nr = ack;
        feed(&mut c, &h, None, b"hello", 10);
        h.seq_nr += 1;
        feed(&mut c, &h, None, b"ahead", 10);
        h.seq_nr -= 1;
        assert!(c.is_half_open(), "ack {ack}");
        assert_eq!((c.readable.len(), c.reorder.len(), c.held), (0, 0, 0), "ack {ack}: nothing held");
    }
    h.ack_nr = 39_999;
    feed(&mut c, &h, None, b"hello", 10);
    assert_eq!(*c.state(), State::Connected);
    assert_eq!(&c.readable[..], b"hello");
    // Nobody answers another: it ends at its deadline.
    let mut silent = Conn::accept(&syn, 1, MSS, 0);
    silent.on_timer(HALF_OPEN_US - 1);
    assert!(silent.is_half_open());
    silent.on_timer(HALF_OPEN_US);
    assert_eq!(*silent.state(), State::Closed(End::TimedOut));
}
