//! The MSE handshake as two pure state machines, initiator (A) and
//! responder (B). Each takes bytes as they arrive and says what to send;
//! when it is through it hands over the two RC4 streams and any payload that
//! came along. The steps of the spec:
//!
//! ```text
//! 1 A->B: Ya, PadA
//! 2 B->A: Yb, PadB
//! 3 A->B: HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
//!         ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! 4 B->A: ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload)
//! 5 A->B: ENCRYPT2(payload)
//! ```
//!
//! Every state waits for a known number of bytes, or searches a bounded
//! window for its sync marker, so the buffer never holds more than the
//! largest step (the 65535-byte IA) plus one read.

use super::cipher::{self, Rc4Stream};
use super::dh::KeyPair;
use super::{hash, req2, Method, Methods, MseError, KEY_LEN, MAX_PAD};
use rand::{Rng, RngCore};

const VC: [u8; 8] = [0; 8];

/// The handshake is through.
pub struct Established {
    pub method: Method,
    /// (ours, theirs): our sending and receiving RC4 streams, positioned after
    /// the handshake; `None` when plaintext was selected.
    pub ciphers: Option<(Rc4Stream, Rc4Stream)>,
    /// Payload the peer sent already, decrypted (for a responder, the
    /// initiator's IA: its BitTorrent handshake).
    pub received: Vec<u8>,
    /// The info hash the handshake was for.
    pub skey: [u8; 20],
}

/// What one batch of input led to.
#[derive(Default)]
pub struct Progress {
    /// Bytes to send to the peer now.
    pub send: Vec<u8>,
    pub done: Option<Established>,
}

/// A state's step: wait for more bytes, move on, or finish.
enum Step<S> {
    Wait(S),
    Next(S),
    Done(Box<Established>),
}

/// Random padding: up to 512 bytes (zeros; they are encrypted or ignored).
fn padding(rng: &mut impl RngCore) -> Vec<u8> {
    vec![0u8; rng.gen_range(0..=MAX_PAD)]
}

fn u16_at(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

/// Finds a sync marker that starts within [`MAX_PAD`] bytes of `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let window = &hay[..hay.len().min(MAX_PAD + needle.len())];
    window.windows(needle.len()).position(|w| w == needle)
}

/// Runs `step` until it waits or finishes.
fn drive<S>(
    state: &mut Option<S>,
    buf: &mut Vec<u8>,
    out: &mut Progress,
    mut step: impl FnMut(S, &mut Vec<u8>, &mut Progress) -> Result<Step<S>, MseError>,
) -> Result<(), MseError> {
    loop {
        let Some(s) = state.take() else { return Err(MseError::Closed) };
        match step(s, buf, out)? {
            Step::Wait(s) => {
                *state = Some(s);
                return Ok(());
            }
            Step::Next(s) => *state = Some(s),
            Step::Done(est) => {
                out.done = Some(*est);
                return Ok(());
            }
        }
    }
}

/// Takes the first `n` bytes of `buf`, decrypted by `c`.
fn take(buf: &mut Vec<u8>, n: usize, c: &mut Rc4Stream) -> Vec<u8> {
    let mut bytes: Vec<u8> = buf.drain(..n).collect();
    c.apply(&mut bytes);
    bytes
}

/// What follows the handshake: decrypted if RC4 was selected.
fn finish(method: Method, send: Rc4Stream, mut recv: Rc4Stream, mut rest: Vec<u8>, skey: [u8; 20]) -> Established {
    let ciphers = match method {
        Method::Rc4 => {
            recv.apply(&mut rest);
            Some((send, recv))
        }
        Method::Plaintext => None,
    };
    Established { method, ciphers, received: rest, skey }
}

enum AState {
    /// Waiting for Yb.
    Key,
    /// Looking for the encrypted VC, `pattern`, after PadB.
    SyncVc {
        send: Rc4Stream,
        recv: Rc4Stream,
        pattern: [u8; 8],
    },
    /// crypto_select and len(PadD).
    Select {
        send: Rc4Stream,
        recv: Rc4Stream,
    },
    PadD {
        send: Rc4Stream,
        recv: Rc4Stream,
        method: Method,
        len: usize,
    },
}

/// The side that dialled: it knows the torrent (SKEY) and sends its
/// BitTorrent handshake as the initial payload.
pub struct Initiator {
    keys: KeyPair,
    skey: [u8; 20],
    offer: Methods,
    ia: Vec<u8>,
    pad_c: Vec<u8>,
    buf: Vec<u8>,
    state: Option<AState>,
}

impl Initiator {
    /// The initiator and its first message (Ya, PadA).
    pub fn new(skey: [u8; 20], offer: Methods, ia: Vec<u8>, rng: &mut impl RngCore) -> (Initiator, Vec<u8>) {
        assert!(ia.len() <= u16::MAX as usize, "IA fits its length field");
        let keys = KeyPair::generate(rng);
        let mut first = keys.public.to_vec();
        first.extend(padding(rng));
        let pad_c = padding(rng);
        (Initiator { keys, skey, offer, ia, pad_c, buf: Vec::new(), state: Some(AState::Key) }, first)
    }

    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, MseError> {
        self.buf.extend_from_slice(input);
        let mut out = Progress::default();
        let (keys, skey, offer) = (&self.keys, self.skey, self.offer);
        let (ia, pad_c) = (&self.ia, &self.pad_c);
        drive(&mut self.state, &mut self.buf, &mut out, |state, buf, out| match state {
            AState::Key => {
                if buf.len() < KEY_LEN {
                    return Ok(Step::Wait(AState::Key));
                }
                let s = keys.shared(&buf[..KEY_LEN])?;
                buf.drain(..KEY_LEN);
                let (key_a, key_b) = cipher::keys(&s, &skey);
                let (mut send, mut recv) = (Rc4Stream::new(&key_a), Rc4Stream::new(&key_b));
                out.send = step3(&s, &skey, offer, pad_c, ia, &mut send);
                let mut pattern = VC;
                recv.apply(&mut pattern);
                Ok(Step::Next(AState::SyncVc { send, recv, pattern }))
            }
            AState::SyncVc { send, recv, pattern } => match find(buf, &pattern) {
                Some(at) => {
                    buf.drain(..at + VC.len());
                    Ok(Step::Next(AState::Select { send, recv }))
                }
                None if buf.len() >= MAX_PAD + VC.len() => Err(MseError::NoSync("VC", KEY_LEN + MAX_PAD + VC.len())),
                None => Ok(Step::Wait(AState::SyncVc { send, recv, pattern })),
            },
            AState::Select { send, mut recv } => {
                if buf.len() < 6 {
                    return Ok(Step::Wait(AState::Select { send, recv }));
                }
                let b = take(buf, 6, &mut recv);
                let select = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let method = match select {
                    1 if offer.plaintext => Method::Plaintext,
                    2 if offer.rc4 => Method::Rc4,
                    _ => return Err(MseError::BadSelect(select)),
                };
                let len = u16_at(&b[4..]);
                if len > MAX_PAD {
                    return Err(MseError::PadTooLong(len));
                }
                Ok(Step::Next(AState::PadD { send, recv, method, len }))
            }
            AState::PadD { send, mut recv, method, len } => {
                if buf.len() < len {
                    return Ok(Step::Wait(AState::PadD { send, recv, method, len }));
                }
                take(buf, len, &mut recv);
                Ok(Step::Done(Box::new(finish(method, send, recv, std::mem::take(buf), skey))))
            }
        })?;
        Ok(out)
    }
}

/// Step 3: the sync hash, the obfuscated SKEY, and the encrypted rest.
fn step3(s: &[u8], skey: &[u8; 20], offer: Methods, pad_c: &[u8], ia: &[u8], send: &mut Rc4Stream) -> Vec<u8> {
    let mut out = hash(&[b"req1", s]).to_vec();
    let req3 = hash(&[b"req3", s]);
    out.extend(req2(skey).iter().zip(req3).map(|(a, b)| a ^ b));
    let mut enc = VC.to_vec();
    enc.extend(offer.bits().to_be_bytes());
    enc.extend((pad_c.len() as u16).to_be_bytes());
    enc.extend(pad_c);
    enc.extend((ia.len() as u16).to_be_bytes());
    enc.extend(ia);
    send.apply(&mut enc);
    out.extend(enc);
    out
}

enum BState {
    /// Waiting for Ya.
    Key,
    /// Looking for HASH('req1', S) after PadA.
    SyncReq1 {
        s: [u8; KEY_LEN],
        req1: [u8; 20],
    },
    /// HASH('req2', SKEY) xor HASH('req3', S): which torrent.
    Skey {
        s: [u8; KEY_LEN],
    },
    /// VC, crypto_provide, len(PadC).
    Provide {
        skey: [u8; 20],
        send: Rc4Stream,
        recv: Rc4Stream,
    },
    /// PadC and len(IA).
    PadC {
        skey: [u8; 20],
        send: Rc4Stream,
        recv: Rc4Stream,
        method: Method,
        len: usize,
    },
    Ia {
        skey: [u8; 20],
        send: Rc4Stream,
        recv: Rc4Stream,
        method: Method,
        len: usize,
    },
}

/// The side that was dialled: it learns the torrent from the handshake.
pub struct Responder {
    keys: KeyPair,
    accept: Methods,
    pad_b: Vec<u8>,
    pad_d: Vec<u8>,
    buf: Vec<u8>,
    state: Option<BState>,
}

impl Responder {
    /// `accept`: the methods we may select (RC4 first).
    pub fn new(accept: Methods, rng: &mut impl RngCore) -> Responder {
        let keys = KeyPair::generate(rng);
        let (pad_b, pad_d) = (padding(rng), padding(rng));
        Responder { keys, accept, pad_b, pad_d, buf: Vec::new(), state: Some(BState::Key) }
    }

    /// `lookup` maps HASH('req2', SKEY) to the SKEY (info hash) we serve.
    pub fn feed(&mut self, input: &[u8], lookup: &dyn Fn(&[u8; 20]) -> Option<[u8; 20]>) -> Result<Progress, MseError> {
        self.buf.extend_from_slice(input);
        let mut out = Progress::default();
        let (keys, accept, pad_b, pad_d) = (&self.keys, self.accept, &self.pad_b, &self.pad_d);
        drive(&mut self.state, &mut self.buf, &mut out, |state, buf, out| match state {
            BState::Key => {
                if buf.len() < KEY_LEN {
                    return Ok(Step::Wait(BState::Key));
                }
                let s = keys.shared(&buf[..KEY_LEN])?;
                buf.drain(..KEY_LEN);
                out.send.extend(keys.public);
                out.send.extend(pad_b);
                Ok(Step::Next(BState::SyncReq1 { s, req1: hash(&[b"req1", &s]) }))
            }
            BState::SyncReq1 { s, req1 } => match find(buf, &req1) {
                Some(at) => {
                    buf.drain(..at + req1.len());
                    Ok(Step::Next(BState::Skey { s }))
                }
                None if buf.len() >= MAX_PAD + req1.len() => {
                    Err(MseError::NoSync("HASH('req1', S)", KEY_LEN + MAX_PAD + req1.len()))
                }
                None => Ok(Step::Wait(BState::SyncReq1 { s, req1 })),
            },
            BState::Skey { s } => {
                if buf.len() < 20 {
                    return Ok(Step::Wait(BState::Skey { s }));
                }
                let req3 = hash(&[b"req3", &s]);
                let mut want = [0u8; 20];
                for (i, b) in buf.drain(..20).enumerate() {
                    want[i] = b ^ req3[i];
                }
                let skey = lookup(&want).ok_or(MseError::UnknownTorrent)?;
                let (key_a, key_b) = cipher::keys(&s, &skey);
                Ok(Step::Next(BState::Provide { skey, send: Rc4Stream::new(&key_b), recv: Rc4Stream::new(&key_a) }))
            }
            BState::Provide { skey, send, mut recv } => {
                if buf.len() < 14 {
                    return Ok(Step::Wait(BState::Provide { skey, send, recv }));
                }
                let b = take(buf, 14, &mut recv);
                if b[..8] != VC {
                    return Err(MseError::BadVc);
                }
                let provide = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                let method = accept.select(provide).ok_or(MseError::NoCommonMethod(provide))?;
                let len = u16_at(&b[12..]);
                if len > MAX_PAD {
                    return Err(MseError::PadTooLong(len));
                }
                Ok(Step::Next(BState::PadC { skey, send, recv, method, len }))
            }
            BState::PadC { skey, send, mut recv, method, len } => {
                if buf.len() < len + 2 {
                    return Ok(Step::Wait(BState::PadC { skey, send, recv, method, len }));
                }
                let b = take(buf, len + 2, &mut recv);
                let len = u16_at(&b[len..]);
                Ok(Step::Next(BState::Ia { skey, send, recv, method, len }))
            }
            BState::Ia { skey, mut send, mut recv, method, len } => {
                if buf.len() < len {
                    return Ok(Step::Wait(BState::Ia { skey, send, recv, method, len }));
                }
                let mut ia = take(buf, len, &mut recv);
                out.send.extend(step4(method, pad_d, &mut send));
                let rest = finish(method, send, recv, std::mem::take(buf), skey);
                ia.extend(rest.received);
                Ok(Step::Done(Box::new(Established { received: ia, ..rest })))
            }
        })?;
        Ok(out)
    }
}

/// Step 4: VC, crypto_select, len(PadD), PadD, encrypted.
fn step4(method: Method, pad_d: &[u8], send: &mut Rc4Stream) -> Vec<u8> {
    let mut out = VC.to_vec();
    out.extend(method.bit().to_be_bytes());
    out.extend((pad_d.len() as u16).to_be_bytes());
    out.extend(pad_d);
    send.apply(&mut out);
    out
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
