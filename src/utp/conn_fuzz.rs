//! A connection driven by arbitrary packets, for the `utp` fuzz target
//! (`fuzz/targets.rs`, whose corpus `tests/fuzz_corpus.rs` replays). It
//! lives beside `conn.rs` because what it checks are the connection's
//! private books: bytes in flight, bytes held out of order, the budget.

use super::*;

/// Feeds each datagram framed in `data` (a 2-byte big-endian length, then
/// that many bytes) to one connection that has data in flight, parsed as
/// the socket parses it. Sequence and ack numbers are taken relative to
/// the connection's own (unless their top bit is set), so that the fuzzer
/// reaches the reorder buffer and the selective ack. Panics if a bound or
/// the books break.
pub fn packets(data: &[u8]) {
    let budget = Budget::new(REORDER_BUDGET);
    let mut c = Conn::connect(7, 65_500, 1400).with_budget(budget.clone(), std::net::Ipv4Addr::LOCALHOST.into());
    let (mut now, mut scratch) = (1_000u64, Vec::new());
    c.transmit(now, &mut scratch, |_| {});
    let answer = Header {
        kind: Kind::State,
        conn_id: 7,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: 1 << 20,
        seq_nr: 300,
        ack_nr: 65_500,
    };
    c.on_packet(&Packet { header: answer, sack: None, payload: &[] }, now);
    c.open_window();
    let mut rest = data;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let (d, tail) = tail.split_at((u16::from_be_bytes(*len) as usize).min(tail.len()));
        rest = tail;
        let Ok(p) = packet::parse(d) else { continue };
        c.write(&[0x55; 4000]);
        c.transmit(now, &mut scratch, |_| {});
        let header = rebase(&c, &p.header);
        c.on_packet(&Packet { header, sack: p.sack, payload: p.payload }, now);
        now += u64::from(p.header.timestamp % 200_000);
        c.on_timer(now);
        c.transmit(now, &mut scratch, |_| {});
        check(&c, &budget);
        if matches!(c.state, State::Closed(_)) {
            break;
        }
    }
    drop(c);
    assert_eq!(budget.used(), 0, "a dropped connection gives back what it held");
}

fn rebase(c: &Conn, h: &Header) -> Header {
    let seq_nr = match h.seq_nr {
        s if s & 0x8000 != 0 => s,
        s => c.ack_nr.wrapping_add(1).wrapping_add(s % (MAX_REORDER + 64)),
    };
    let ack_nr = match h.ack_nr {
        a if a & 0x8000 != 0 => a,
        a => c.seq_nr.wrapping_sub(1).wrapping_sub(a % (c.flight.len() as u16 + 8)),
    };
    Header { seq_nr, ack_nr, ..*h }
}

fn check(c: &Conn, budget: &Budget) {
    let in_network: usize = c.flight.iter().filter(|s| !s.sacked && !s.resend).map(|s| s.payload.len()).sum();
    assert_eq!(c.flight_bytes, in_network, "bytes in flight");
    assert!(c.flight.len() <= MAX_FLIGHT + 2, "{} packets in flight", c.flight.len());
    assert!(c.readable.len() + c.reorder_bytes <= RECV_BUF);
    assert!(c.reorder.len() <= MAX_REORDER as usize);
    let held: usize = c.reorder.values().map(|p| p.len() + REORDER_OVERHEAD).sum();
    let payload: usize = c.reorder.values().map(Vec::len).sum();
    assert_eq!((c.held, c.reorder_bytes), (held, payload), "the reorder books");
    assert!(c.held <= MAX_REORDER_HELD && budget.used() == c.held);
}
