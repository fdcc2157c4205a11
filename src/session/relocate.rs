//! Whether a torrent's data may move to another folder (the API's
//! `torrents/setLocation`), and the order to move it.
//!
//! Why here: the move itself is the torrent task's (`torrent::relocate`,
//! through the verified handoff); the session sees every torrent and so
//! decides what must not move: a magnet (no data yet), data not complete,
//! a move already under way, and data another torrent seeds too (a
//! cross-seed's borrowed files, files linked in by matching, the same item
//! named by two torrents): moving it would pull it from under the other.

use super::entry::Entry;
use super::{not_managed, Named, Session, SessionError};
use crate::storage::Place;
use crate::torrent::task::Cmd;
use crate::torrent::TorrentState;
use crate::types::InfoHash;
use std::path::PathBuf;
use std::sync::Arc;

/// What a relocation request did.
#[derive(Debug, PartialEq, Eq)]
pub enum Relocation {
    /// The torrent was told to move its data here (it shows `moving`).
    Started(Named, PathBuf),
    /// The data is in that folder already.
    AlreadyThere(Named),
}

impl Session {
    /// Moves `hash`'s data into the folder `sub` (plain names joined by
    /// `/`, or "") of `root`, a folder dropseed may write, links resolved
    /// by the caller. A name taken there gives the item another (" (2)").
    pub async fn relocate(
        self: &Arc<Self>,
        hash: InfoHash,
        root: PathBuf,
        sub: String,
    ) -> Result<Relocation, SessionError> {
        let (sender, torrent, sharing) = {
            let registry = self.registry();
            match registry.get(&hash) {
                Some(Entry::Torrent(t)) => (t.cmd.clone(), t.shared.clone(), self.env.shares().others(&hash)),
                Some(Entry::Magnet(m)) => {
                    let named = Named { name: m.magnet.display_name(), hash };
                    return Err(SessionError::NotApplicable(named, "has no data to move until its metadata arrives"));
                }
                Some(Entry::Reserved(_)) => return Err(SessionError::Busy(hash)),
                None => return Err(not_managed(&hash)),
            }
        };
        let named = Named { name: torrent.name().to_string(), hash };
        movable(&torrent, &sharing).map_err(|why| SessionError::Refused(named.clone(), why))?;
        let (meta, from) = (torrent.meta().clone(), torrent.place());
        let found = self.env.disk().run(move || {
            let here = Place::new(&root, &sub, &meta.name, true);
            let same = |a: &std::path::Path, b: &std::path::Path| {
                a.canonicalize().ok().is_some_and(|a| b.canonicalize().is_ok_and(|b| a == b))
            };
            (!same(&here.dir, &from.dir)).then(|| crate::torrent::handoff::target_in(&root, &sub, &meta))
        });
        let Some(target) = found.await.map_err(|e| SessionError::Io(e.to_string()))? else {
            return Ok(Relocation::AlreadyThere(named));
        };
        let to = target.top();
        sender.send_async(Cmd::Relocate(Box::new(target))).await.map_err(|_| SessionError::Gone(hash))?;
        Ok(Relocation::Started(named, to))
    }
}

/// Why a torrent's data must stay where it is, if it must.
fn movable(t: &crate::torrent::TorrentShared, sharing: &[InfoHash]) -> Result<(), String> {
    let (borrowed, linked, moving) = t.with_record(|r| (r.borrowed, !r.linked.is_empty(), r.moving.is_some()));
    if borrowed {
        return Err("seeds data that was there before it (a cross-seed): its files are another torrent's or \
                    yours; remove it and add it again at the other place"
            .into());
    }
    if let Some(other) = sharing.first() {
        return Err(format!(
            "shares its files with torrent {}: moving them would take them from under it; remove that one first",
            &other.hex()[..8]
        ));
    }
    if linked {
        return Err("seeds files linked in from another torrent's data; they stay where that one has them".into());
    }
    if moving {
        return Err("is being moved already".into());
    }
    match t.status().state {
        TorrentState::Seeding | TorrentState::Paused | TorrentState::Stopped if t.is_complete() => Ok(()),
        TorrentState::Moving => Err("is being moved already".into()),
        state => Err(format!(
            "is {}: only a complete torrent that seeds or is paused moves; an incomplete one goes to its \
             category's folder once done",
            state.as_str()
        )),
    }
}
