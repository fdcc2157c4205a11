//! Who has which pieces, between us and one peer: ours as we announce them
//! (first `have_all`, `have_none` or the bitfield, then a `have` for each
//! piece we verify), the peer's as it tells us, and what follows from that:
//! our interest, the picker's availability and the end of a connection
//! between two seeds.

use super::PeerConn;
use crate::conn::{ConnEnd, OutQueue};
use crate::torrent::fast::FastCounters;
use crate::types::Bitfield;
use crate::wire::Message;
use std::sync::atomic::Ordering;

impl PeerConn {
    /// Our pieces, first of all as BEP 6 wants: `have_all` or `have_none` to
    /// a fast peer where they say it, else the bitfield (or, to a peer
    /// without the extension, nothing while it is empty: BEP 3 allows that).
    pub(super) fn send_have_state(&mut self, out: &mut OutQueue) {
        let counters = &self.shared.fast;
        let inner = self.shared.lock();
        self.haves_sent = inner.completed_count();
        let have = inner.have();
        if self.fast && have.is_full() {
            out.push_small(&Message::HaveAll);
            FastCounters::bump(&counters.have_all_sent);
        } else if self.fast && have.count() == 0 {
            out.push_small(&Message::HaveNone);
            FastCounters::bump(&counters.have_none_sent);
        } else if have.count() > 0 {
            out.push_small(&Message::Bitfield(have.as_bytes()));
        }
        drop(inner);
        self.have_rx.mark_unchanged();
    }

    pub(super) fn on_have(&mut self, i: u32, out: &mut OutQueue) -> Result<(), ConnEnd> {
        let n = self.peer_has.len();
        if i as usize >= n {
            return Err(ConnEnd::Protocol(format!("have {i} out of range ({n} pieces)")));
        }
        if self.peer_has.set(i as usize) {
            let mut inner = self.shared.lock();
            let picker = inner.picker_mut();
            picker.peer_have(i);
            if picker.wants(i) {
                self.download.set_interest(true, &self.handle, out);
            }
        }
        self.note_seed()
    }

    /// BEP 3 wants it first, but some clients send it late or twice; it then
    /// replaces what we knew of the peer.
    pub(super) fn on_bitfield(&mut self, bytes: &[u8], out: &mut OutQueue) -> Result<(), ConnEnd> {
        let n = self.peer_has.len();
        let bf = Bitfield::from_bytes(bytes, n).ok_or_else(|| {
            ConnEnd::Protocol(if bytes.len() == n.div_ceil(8) {
                format!("bitfield sets spare bits past piece {n}")
            } else {
                format!("bitfield of {} bytes for {n} pieces", bytes.len())
            })
        })?;
        self.replace_peer_has(bf, out)
    }

    /// What the peer has, from a bitfield, `have_all` or `have_none`.
    pub(super) fn replace_peer_has(&mut self, bf: Bitfield, out: &mut OutQueue) -> Result<(), ConnEnd> {
        let mut inner = self.shared.lock();
        let picker = inner.picker_mut();
        picker.peer_bitfield(&self.peer_has, false);
        self.peer_has = bf;
        picker.peer_bitfield(&self.peer_has, true);
        let wants = picker.wants_any(&self.peer_has);
        drop(inner);
        if wants {
            self.download.set_interest(true, &self.handle, out);
        }
        self.note_seed()
    }

    /// Marks a peer that has everything; two seeds have nothing to say.
    fn note_seed(&mut self) -> Result<(), ConnEnd> {
        if self.peer_has.is_full() {
            self.handle.is_seed.store(true, Ordering::Relaxed);
            if self.shared.is_complete() {
                return Err(ConnEnd::BothSeeds);
            }
        }
        Ok(())
    }

    pub(super) fn send_haves(&mut self, out: &mut OutQueue) -> Result<(), ConnEnd> {
        let (new, complete): (Vec<u32>, bool) = {
            let inner = self.shared.lock();
            (inner.completed_since(self.haves_sent).to_vec(), inner.have().is_full())
        };
        self.haves_sent += new.len();
        for i in new {
            // A peer that has the piece does not need to hear about it.
            if !self.peer_has.get(i as usize) {
                out.push_small(&Message::Have(i));
            }
        }
        if complete {
            self.download.set_interest(false, &self.handle, out);
            if self.peer_has.is_full() {
                return Err(ConnEnd::BothSeeds);
            }
        }
        Ok(())
    }
}
