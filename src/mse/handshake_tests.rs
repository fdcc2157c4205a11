//! The handshake machines against each other and against hostile bytes.

use super::*;
use crate::mse::io::{initiate, respond};
use std::time::Duration;

const SKEY: [u8; 20] = [0x5a; 20];

fn known(h: &[u8; 20]) -> Option<[u8; 20]> {
    (*h == req2(&SKEY)).then_some(SKEY)
}

fn unknown(_: &[u8; 20]) -> Option<[u8; 20]> {
    None
}

fn ia() -> Vec<u8> {
    (0..68u8).collect()
}

fn pair(offer: Methods, accept: Methods) -> (Initiator, Vec<u8>, Responder) {
    let mut rng = rand::thread_rng();
    let (a, first) = Initiator::new(SKEY, offer, ia(), &mut rng);
    (a, first, Responder::new(accept, &mut rng))
}

/// Feeds `bytes` in chunks of `chunk`, collecting what is sent back.
fn feed_b(b: &mut Responder, bytes: &[u8], chunk: usize) -> Result<Progress, MseError> {
    let mut all = Progress::default();
    for c in bytes.chunks(chunk.max(1)) {
        let p = b.feed(c, &known)?;
        all.send.extend(p.send);
        if p.done.is_some() {
            all.done = p.done;
        }
    }
    Ok(all)
}

fn feed_a(a: &mut Initiator, bytes: &[u8], chunk: usize) -> Result<Progress, MseError> {
    let mut all = Progress::default();
    for c in bytes.chunks(chunk.max(1)) {
        let p = a.feed(c)?;
        all.send.extend(p.send);
        if p.done.is_some() {
            all.done = p.done;
        }
    }
    Ok(all)
}

/// Runs both sides to the end; `after_a` / `after_b` is payload each sends
/// right behind its last handshake bytes.
fn handshake(offer: Methods, accept: Methods, chunk: usize) -> Result<(Established, Established), MseError> {
    let (mut a, first, mut b) = pair(offer, accept);
    let p = feed_b(&mut b, &first, chunk)?;
    let p = feed_a(&mut a, &p.send, chunk)?;
    let mut step3 = p.send;
    assert!(p.done.is_none());
    let pb = feed_b(&mut b, &std::mem::take(&mut step3), chunk)?;
    let eb = pb.done.expect("responder through");
    let pa = feed_a(&mut a, &pb.send, chunk)?;
    Ok((pa.done.expect("initiator through"), eb))
}

#[test]
fn round_trip_with_rc4_carries_the_ia_and_both_directions() {
    for chunk in [1, 7, 100, 4096] {
        let (mut ea, mut eb) = handshake(Methods::BOTH, Methods::BOTH, chunk).unwrap();
        assert_eq!((ea.method, eb.method), (Method::Rc4, Method::Rc4));
        assert_eq!(eb.received, ia(), "the IA arrives decrypted");
        assert_eq!(eb.skey, SKEY);
        let (a_send, a_recv) = ea.ciphers.as_mut().unwrap();
        let (b_send, b_recv) = eb.ciphers.as_mut().unwrap();
        let mut msg = b"piece data".to_vec();
        a_send.apply(&mut msg);
        assert_ne!(&msg, b"piece data");
        b_recv.apply(&mut msg);
        assert_eq!(&msg, b"piece data");
        let mut back = b"have".to_vec();
        b_send.apply(&mut back);
        a_recv.apply(&mut back);
        assert_eq!(&back, b"have");
    }
}

#[test]
fn plaintext_is_selected_only_when_both_allow_it() {
    let (ea, eb) = handshake(Methods::BOTH, Methods::PLAINTEXT, 50).unwrap();
    assert_eq!((ea.method, eb.method), (Method::Plaintext, Method::Plaintext));
    assert!(ea.ciphers.is_none() && eb.ciphers.is_none());
    assert_eq!(eb.received, ia());
    // Offered both, a responder that puts plaintext first takes it.
    let (ea, eb) = handshake(Methods::BOTH, Methods::BOTH_PLAINTEXT_FIRST, 50).unwrap();
    assert_eq!((ea.method, eb.method), (Method::Plaintext, Method::Plaintext));
    let (ea, _) = handshake(Methods::BOTH, Methods::BOTH, 50).unwrap();
    assert_eq!(ea.method, Method::Rc4);
    // A peer offering only plaintext to a responder that requires RC4.
    let e = handshake(Methods::PLAINTEXT, Methods::RC4, 50).err();
    assert_eq!(e, Some(MseError::NoCommonMethod(1)));
}

#[test]
fn payload_behind_the_handshake_reaches_the_other_side() {
    let (mut a, first, mut b) = pair(Methods::RC4, Methods::RC4);
    let step2 = b.feed(&first, &known).unwrap().send;
    let step3 = a.feed(&step2).unwrap().send;
    let pb = b.feed(&step3, &known).unwrap();
    let mut eb = pb.done.unwrap();
    // The responder's BitTorrent handshake, in the same segment as step 4.
    let mut reply = pb.send;
    let mut hs = b"responder payload".to_vec();
    eb.ciphers.as_mut().unwrap().0.apply(&mut hs);
    reply.extend(hs);
    let ea = a.feed(&reply).unwrap().done.unwrap();
    assert_eq!(ea.received, b"responder payload");
}

#[test]
fn an_unknown_torrent_is_refused() {
    let (mut a, first, mut b) = pair(Methods::RC4, Methods::RC4);
    let step2 = b.feed(&first, &unknown).unwrap().send;
    let step3 = a.feed(&step2).unwrap().send;
    assert_eq!(b.feed(&step3, &unknown).err(), Some(MseError::UnknownTorrent));
}

/// Random bytes whose first 96 are a valid key (below the prime).
fn junk(len: usize) -> Vec<u8> {
    let mut j: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    if let Some(b) = j.first_mut() {
        *b = 0x12;
    }
    j
}

#[test]
fn junk_of_every_length_waits_then_fails_at_the_bound() {
    // Responder: HASH('req1', S) within 96 + 512 + 20 bytes.
    for len in 0..1200 {
        let mut b = Responder::new(Methods::BOTH, &mut rand::thread_rng());
        let r = b.feed(&junk(len), &known);
        match len {
            0..=627 => assert!(r.is_ok_and(|p| p.done.is_none()), "len {len}"),
            _ => assert_eq!(r.err(), Some(MseError::NoSync("HASH('req1', S)", 628)), "len {len}"),
        }
    }
    // Initiator: the VC within 96 + 512 + 8 bytes.
    for len in 0..1200 {
        let (mut a, _) = Initiator::new(SKEY, Methods::BOTH, ia(), &mut rand::thread_rng());
        let r = a.feed(&junk(len));
        match len {
            0..=615 => assert!(r.is_ok_and(|p| p.done.is_none()), "len {len}"),
            _ => assert_eq!(r.err(), Some(MseError::NoSync("VC", 616)), "len {len}"),
        }
    }
}

#[test]
fn an_endless_stream_before_the_marker_fails_once_past_the_bound() {
    let mut b = Responder::new(Methods::BOTH, &mut rand::thread_rng());
    let mut fed = 0;
    let end = loop {
        match b.feed(&junk(1), &known) {
            Ok(_) => fed += 1,
            Err(e) => break e,
        }
        assert!(fed < 10_000, "never gave up");
    };
    assert_eq!(fed, 627);
    assert!(matches!(end, MseError::NoSync(..)));
    assert!(b.buf.len() <= 628, "bounded buffer");
}

#[test]
fn pad_a_of_512_is_fine_and_513_is_not() {
    for (extra, ok) in [(512usize, true), (513, false)] {
        let (mut a, first, mut b) = pair(Methods::RC4, Methods::RC4);
        // Replace the initiator's PadA by exactly `extra` bytes.
        let mut msg = first[..KEY_LEN].to_vec();
        msg.extend(vec![0xee; extra]);
        let step2 = feed_b(&mut b, &msg, 64).unwrap().send;
        let step3 = a.feed(&step2).unwrap().send;
        let r = feed_b(&mut b, &step3, 64);
        assert_eq!(r.is_ok_and(|p| p.done.is_some()), ok, "PadA {extra}");
    }
}

#[test]
fn pad_c_and_pad_d_over_512_are_refused() {
    let (mut a, first, mut b) = pair(Methods::RC4, Methods::RC4);
    a.pad_c = vec![0; 513];
    let step2 = b.feed(&first, &known).unwrap().send;
    let step3 = a.feed(&step2).unwrap().send;
    assert_eq!(b.feed(&step3, &known).err(), Some(MseError::PadTooLong(513)));

    let (mut a, first, mut b) = pair(Methods::RC4, Methods::RC4);
    b.pad_d = vec![0; 513];
    let step2 = b.feed(&first, &known).unwrap().send;
    let step3 = a.feed(&step2).unwrap().send;
    let step4 = b.feed(&step3, &known).unwrap().send;
    assert_eq!(a.feed(&step4).err(), Some(MseError::PadTooLong(513)));
}

#[test]
fn a_wrong_vc_is_refused() {
    // To the responder: the first encrypted byte after the two hashes.
    let (mut a, first, mut b) = pair(Methods::RC4, Methods::RC4);
    let step2 = b.feed(&first, &known).unwrap().send;
    let mut step3 = a.feed(&step2).unwrap().send;
    step3[40] ^= 1;
    assert_eq!(b.feed(&step3, &known).err(), Some(MseError::BadVc));
    // To the initiator: no VC to sync on, so it gives up at the bound.
    let (mut a, first, mut b) = pair(Methods::RC4, Methods::RC4);
    let step2 = b.feed(&first, &known).unwrap().send;
    let step3 = a.feed(&step2).unwrap().send;
    let mut step4 = b.feed(&step3, &known).unwrap().send;
    step4[0] ^= 1;
    let r = a.feed(&step4).and_then(|p| {
        assert!(p.done.is_none());
        a.feed(&junk(600))
    });
    assert!(matches!(r.err(), Some(MseError::NoSync("VC", _))));
}

#[test]
fn a_select_we_did_not_offer_is_refused() {
    let (mut a, first, mut b) = pair(Methods::RC4, Methods::RC4);
    let step2 = b.feed(&first, &known).unwrap().send;
    let step3 = a.feed(&step2).unwrap().send;
    let step4 = b.feed(&step3, &known).unwrap().send;
    // As if we had offered plaintext only: RC4 comes back unasked.
    a.offer = Methods::PLAINTEXT;
    assert_eq!(a.feed(&step4).err(), Some(MseError::BadSelect(2)));
}

#[tokio::test]
async fn a_silent_or_dribbling_peer_times_out() {
    let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let t = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let dribble = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for _ in 0..100 {
            if theirs.write_all(&[0x12]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let r = respond(&mut ours, &[], Methods::BOTH, &|_| None, t).await;
    assert_eq!(r.err(), Some(MseError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(1));
    dribble.abort();
}

#[tokio::test]
async fn the_drivers_complete_over_a_stream() {
    let (mut x, mut y) = tokio::io::duplex(1024);
    let t = Duration::from_secs(5);
    let a = tokio::spawn(async move { initiate(&mut x, SKEY, Methods::BOTH, ia(), t).await });
    let eb = respond(&mut y, &[], Methods::RC4, &known, t).await.unwrap();
    let ea = a.await.unwrap().unwrap();
    assert_eq!(eb.received, ia());
    assert_eq!((ea.method, eb.method), (Method::Rc4, Method::Rc4));
}
