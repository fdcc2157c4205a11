//! What a torrent carries besides its data: its category, tags and own
//! share limits, given when it is added (the API's `torrents/add`) and
//! changed later (`addTags`, `removeTags`, `deleteTags`, `setShareLimits`).
//!
//! Why here: the API changes these through the session, as it changes
//! everything else, and gets typed outcomes back. A torrent keeps them in
//! its resume record, a magnet in its state file (and hands them to the
//! torrent it becomes). Changes are made one at a time, under the tag
//! book's lock, so two requests never write one file at once.

use super::entry::Entry;
use super::tags::{self, TagBook};
use super::{not_managed, Named, Session, SessionError};
use crate::share::ShareLimits;
use crate::types::InfoHash;

/// A torrent's category, tags and own share limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddOptions {
    /// "" for none.
    pub category: String,
    /// Checked tags (see `tags::check`), sorted.
    pub tags: Vec<String>,
    /// None: the config's limits.
    pub share: Option<ShareLimits>,
    /// The name shown instead of the torrent's own (see [`check_name`]).
    pub name: Option<String>,
}

/// The longest name a torrent may be shown under, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Checks a name to show a torrent under (trimmed).
pub fn check_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("name: empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("name: longer than {MAX_NAME_LEN} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err("name: contains a newline or another control character".into());
    }
    Ok(name.to_string())
}

/// One change to a torrent's labels.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelChange {
    AddTags(Vec<String>),
    RemoveTags(Vec<String>),
    Share(ShareLimits),
    /// The name to show (checked with [`check_name`]).
    Rename(String),
    /// Another category ("" for none; an existing one, checked by the
    /// caller). The data stays where it is, as with qBittorrent's manual
    /// mode; a torrent not yet complete lands in the new category's folder.
    Category(String),
}

/// What a change may touch, in a record or a magnet's options.
struct Labels<'a> {
    category: &'a mut String,
    tags: &'a mut Vec<String>,
    share: &'a mut Option<ShareLimits>,
    name: &'a mut Option<String>,
}

impl LabelChange {
    /// Applies the change; true if something changed.
    fn apply(&self, l: Labels<'_>) -> Result<bool, SessionError> {
        let Labels { category, tags, share, name } = l;
        match self {
            LabelChange::AddTags(new) => {
                let next = tags::merged(tags, new).map_err(SessionError::Invalid)?;
                Ok(std::mem::replace(tags, next) != *tags)
            }
            LabelChange::RemoveTags(gone) => {
                let before = tags.len();
                tags.retain(|t| !gone.contains(t));
                Ok(tags.len() != before)
            }
            LabelChange::Share(limits) => Ok(share.replace(*limits) != Some(*limits)),
            LabelChange::Rename(new) => Ok(name.replace(new.clone()).as_ref() != Some(new)),
            LabelChange::Category(new) => Ok(std::mem::replace(category, new.clone()) != *new),
        }
    }
}

impl Session {
    /// The known tags, sorted.
    pub async fn known_tags(&self) -> Vec<String> {
        self.tags.lock().await.list()
    }

    /// Makes tags known (checked by the caller with `tags::check`).
    pub async fn create_tags(&self, new: &[String]) -> Result<(), SessionError> {
        let mut book = self.tags.lock().await;
        self.remember(&mut book, new).await
    }

    /// Forgets tags, and takes them off every torrent that has them.
    pub async fn delete_tags(&self, gone: &[String]) -> Result<(), SessionError> {
        let mut book = self.tags.lock().await;
        let hashes: Vec<InfoHash> = self.registry().keys().copied().collect();
        let change = LabelChange::RemoveTags(gone.to_vec());
        for hash in hashes {
            match self.relabel(hash, &change).await {
                Ok(_) | Err(SessionError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let Some(next) = book.without(gone) else { return Ok(()) };
        *book = self.save_book(next).await?;
        Ok(())
    }

    /// Changes one torrent's (or magnet's) tags or share limits, and saves
    /// them. Tags added become known tags.
    pub async fn change_labels(&self, hash: InfoHash, change: LabelChange) -> Result<Named, SessionError> {
        let mut book = self.tags.lock().await;
        // The bound is checked first; the tags become known once a torrent has them.
        let known = match &change {
            LabelChange::AddTags(new) => book.with(new).map_err(SessionError::Invalid)?,
            _ => None,
        };
        let named = self.relabel(hash, &change).await?;
        if let Some(next) = known {
            *book = self.save_book(next).await?;
        }
        Ok(named)
    }

    async fn remember(&self, book: &mut TagBook, new: &[String]) -> Result<(), SessionError> {
        if let Some(next) = book.with(new).map_err(SessionError::Invalid)? {
            *book = self.save_book(next).await?;
        }
        Ok(())
    }

    async fn save_book(&self, book: TagBook) -> Result<TagBook, SessionError> {
        let dir = self.env.state_dir().to_path_buf();
        let saved = tokio::task::spawn_blocking(move || book.save(&dir).map(|()| book)).await;
        match saved {
            Ok(Ok(book)) => Ok(book),
            Ok(Err(e)) => Err(SessionError::Io(format!("cannot save the tags: {e}"))),
            Err(e) => Err(SessionError::Io(format!("cannot save the tags: {e}"))),
        }
    }

    /// Applies a change to a torrent's record (saved) or a magnet's state
    /// file. Called with the tag book's lock held.
    async fn relabel(&self, hash: InfoHash, change: &LabelChange) -> Result<Named, SessionError> {
        let named = self.named(&hash)?;
        let target = match self.registry().get_mut(&hash) {
            Some(Entry::Torrent(t)) => Target::Torrent(t.shared.clone(), t.cmd.clone()),
            Some(Entry::Magnet(m)) => {
                let o = &mut m.opts;
                let labels =
                    Labels { category: &mut o.category, tags: &mut o.tags, share: &mut o.share, name: &mut o.name };
                if !change.apply(labels)? {
                    return Ok(named);
                }
                Target::Magnet(Box::new((m.magnet.clone(), m.fetch.is_none(), (*m.opts).clone())))
            }
            Some(Entry::Reserved(_)) => return Err(SessionError::Busy(hash)),
            None => return Err(not_managed(&hash)),
        };
        match target {
            Target::Torrent(shared, cmd) => {
                let changed = {
                    shared.with_record(|record| {
                        change.apply(Labels {
                            category: &mut record.category,
                            tags: &mut record.tags,
                            share: &mut record.share,
                            name: &mut record.shown_name,
                        })
                    })?
                };
                if changed && !shared.save_resume(false).await {
                    return Err(SessionError::Io(format!("{named}: the change could not be saved (see the log)")));
                }
                if changed && matches!(change, LabelChange::Share(_)) {
                    // An idle seeder ticks every few minutes: new limits
                    // are weighed now. (A full queue wakes it anyway.)
                    let _ = cmd.try_send(crate::torrent::task::Cmd::Wake);
                }
            }
            Target::Magnet(magnet) => {
                let (magnet, paused, opts) = *magnet;
                super::save_magnet(self.env.state_dir(), &magnet, paused, &opts)
                    .await
                    .map_err(|e| SessionError::Io(format!("{named}: cannot save: {e}")))?;
            }
        }
        tracing::debug!(torrent = %named.name, hash = %hash.short(), ?change, "labels changed");
        Ok(named)
    }
}

/// What `relabel` writes, taken under the registry's lock.
enum Target {
    Torrent(std::sync::Arc<crate::torrent::TorrentShared>, flume::Sender<crate::torrent::task::Cmd>),
    Magnet(Box<(crate::magnet::Magnet, bool, AddOptions)>),
}
