//! The extension protocol (BEP 10) with one peer: its handshake, which
//! bounds our pipeline and names its extension ids, and our metadata
//! served to it (BEP 9). Its PEX messages are [`super::pex`]'s.

use super::{PeerConn, OUT_HIGH_WATER};
use crate::conn::OutQueue;
use crate::extension::{self, ExtHandshake, MetadataMsg};
use crate::metadata::MetadataAssembler;
use crate::wire::Message;

impl PeerConn {
    pub(super) fn on_ext_handshake(&mut self, payload: &[u8]) {
        let Some(hs) = ExtHandshake::decode(payload) else {
            return;
        };
        if let Some(q) = hs.request_limit() {
            self.download.limit_pipeline(q);
        }
        self.peer_ut_metadata = hs.id_of(extension::UT_METADATA);
        self.pex.peer_id = hs.id_of(extension::UT_PEX);
        if let Some(addr) = hs.listen_addr(self.key) {
            self.handle.learn_listen(addr);
        }
        tracing::debug!(peer = %self.key, client = %hs.client(), reqq = ?hs.reqq, "extension handshake");
    }

    /// Serves our metadata (BEP 9); refuses when the send queue is already
    /// long, so a peer cannot make us buffer without bound.
    pub(super) fn serve_metadata(&mut self, payload: &[u8], out: &mut OutQueue) {
        let Some(id) = self.peer_ut_metadata else {
            return;
        };
        if let Ok(MetadataMsg::Request { piece }) = MetadataMsg::decode(payload) {
            let info = &self.shared.meta.info_bytes;
            let reply = match MetadataAssembler::serve(info, piece) {
                Some(data) if out.len() < OUT_HIGH_WATER => MetadataMsg::Data { piece, total_size: info.len(), data },
                _ => MetadataMsg::Reject { piece },
            };
            out.push_small(&Message::Extended { id, payload: &reply.encode() });
        }
    }
}
