//! Where a torrent's data lives: a folder and the name of the torrent's
//! top-level item in it (the single file, or the root folder). A torrent
//! downloads into `incomplete_dir` and is moved, once whole and durable, to
//! its complete folder, where a name already taken makes it take another.
//! Every path of the torrent's files is derived from its place here, so the
//! rest of the engine never joins `download_dir` itself.

use crate::metainfo::Metainfo;
use rustix::fs::AtFlags;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// The folder holding the top-level item (kept as raw bytes: a user's
    /// folder need not be UTF-8).
    #[serde(with = "path_bytes")]
    pub dir: PathBuf,
    /// The folder dropseed made for the place in a configured folder (an
    /// automatic category folder, or a save path's folders below the
    /// configured folder holding it: names joined by `/`), "" for none:
    /// `dir` is then that configured folder joined with it. Group members can replace it with
    /// a link, so it is reached from the configured folder's handle, never
    /// by path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub: String,
    /// The top-level item's name: the torrent's, unless that was taken.
    pub name: String,
    /// The data is where it will stay (the complete folder, or wherever the
    /// user keeps it): never moved again, and never recreated there by
    /// dropseed on its own if it goes missing.
    #[serde(default, with = "bool_as_int")]
    pub settled: bool,
}

impl Place {
    /// `name` in `sub` (plain folder names joined by `/`, or "") of the
    /// configured folder `root`.
    pub fn new(root: &Path, sub: &str, name: &str, settled: bool) -> Place {
        let dir = if sub.is_empty() { root.to_path_buf() } else { root.join(sub) };
        Place { dir, sub: sub.to_string(), name: name.to_string(), settled }
    }

    /// A place saved before `sub` existed, in the folder `sub` made in the
    /// configured folder `root`, learns its `sub` (so it is never again
    /// opened by path); any other place is left as it is.
    pub fn learn_sub(&mut self, root: &Path, sub: &str) {
        if self.sub.is_empty() && !sub.is_empty() && self.dir == root.join(sub) {
            self.sub = sub.to_string();
        }
    }

    /// The configured folder the place is in (the admin's: opened by path).
    pub fn root(&self) -> &Path {
        let depth = self.sub_names().count();
        self.dir.ancestors().nth(depth).unwrap_or(&self.dir)
    }

    /// The folders of `sub`, from the configured folder down.
    pub fn sub_names(&self) -> impl Iterator<Item = &str> {
        self.sub.split('/').filter(|n| !n.is_empty())
    }

    /// The top-level item: the single file, or the torrent's root folder.
    pub fn top(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Where file `i` of `meta` lives in this place.
    pub fn file_path(&self, meta: &Metainfo, i: usize) -> PathBuf {
        // The metainfo's paths start with the torrent's name.
        let mut path = self.top();
        path.extend(meta.files[i].path.iter().skip(1));
        path
    }
}

/// The hidden name a matched file is linked under before it is renamed
/// into place (cross-seed matching), beside its final name.
pub fn link_name(name: &str) -> String {
    format!(".{name}.dropseed-link")
}

/// Removes what a link cut short by a crash left under [`link_name`] for
/// files `files` of `meta` in `place` (never following a link). Blocking.
pub fn clear_stale_links(place: &Place, meta: &Metainfo, files: &[u32]) {
    let Ok(root) = super::nofollow::open_place_dir(place, false) else { return };
    for &i in files.iter().filter(|&&i| (i as usize) < meta.files.len()) {
        let (dirs, name) = super::nofollow::names(place, meta, i as usize);
        if let Ok(dir) = super::nofollow::walk(std::os::fd::AsFd::as_fd(&root), &dirs) {
            let _ = super::nofollow::unlink(std::os::fd::AsFd::as_fd(&dir), &link_name(name));
        }
    }
}

/// The first name of `name`, `name (2)`, `name (3)`, ... that nothing in
/// the open folder `dir` holds, a link included (a file keeps its
/// extension last: `film (2).mkv`).
pub fn free_name(dir: BorrowedFd<'_>, name: &str, single_file: bool) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if single_file && dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    (1..)
        .map(|n| if n == 1 { name.to_string() } else { format!("{stem} ({n}){ext}") })
        .find(|candidate| rustix::fs::statat(dir, candidate.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_err())
        .expect("some name is free")
}

/// Bencode has no booleans: 0 or 1.
pub(crate) mod bool_as_int {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(u8::from(*b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(u8::deserialize(d)? != 0)
    }
}

mod path_bytes {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(p.as_os_str().as_bytes(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let bytes: serde_bytes::ByteBuf = serde_bytes::deserialize(d)?;
        Ok(PathBuf::from(OsString::from_vec(bytes.into_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_link_cut_short_by_a_crash_is_cleared_and_nothing_else() {
        let info = format!(
            "d5:filesld6:lengthi5e4:pathl1:aeed6:lengthi20e4:pathl3:sub1:beee4:name3:dir12:piece lengthi16e6:pieces40:{}e",
            "a".repeat(40)
        );
        let meta = Metainfo::from_torrent_bytes(&crate::metainfo::tests::torrent(&info)).unwrap();
        let root = tempfile::tempdir().unwrap();
        let place = Place::new(root.path(), "", "dir", false);
        std::fs::create_dir_all(root.path().join("dir/sub")).unwrap();
        std::fs::write(root.path().join("dir/sub/.b.dropseed-link"), b"half").unwrap();
        std::fs::write(root.path().join("dir/a"), b"aaaaa").unwrap();
        std::fs::write(root.path().join("dir/sub/.other"), b"users").unwrap();
        clear_stale_links(&place, &meta, &[0, 1]);
        assert!(!root.path().join("dir/sub/.b.dropseed-link").exists());
        assert!(root.path().join("dir/a").exists() && root.path().join("dir/sub/.other").exists());
    }

    #[test]
    fn taken_names_get_a_number_before_the_extension_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fd = crate::storage::nofollow::open_configured_root(d).unwrap();
        let free_name = |_: &Path, name, single| free_name(fd.as_fd(), name, single);
        assert_eq!(free_name(d, "film.mkv", true), "film.mkv");
        std::fs::write(d.join("film.mkv"), b"the user's").unwrap();
        assert_eq!(free_name(d, "film.mkv", true), "film (2).mkv");
        std::fs::write(d.join("film (2).mkv"), b"").unwrap();
        assert_eq!(free_name(d, "film.mkv", true), "film (3).mkv");
        std::fs::create_dir(d.join("Show.S01")).unwrap();
        assert_eq!(free_name(d, "Show.S01", false), "Show.S01 (2)", "a folder's dots are not an extension");
        std::os::unix::fs::symlink("/nonexistent", d.join(".hidden")).unwrap();
        assert_eq!(free_name(d, ".hidden", true), ".hidden (2)", "a dangling link is taken too");
    }

    #[test]
    fn an_older_place_in_a_category_folder_learns_it_is_derived() {
        let mut old = Place { dir: "/dl/tv".into(), sub: String::new(), name: "x".into(), settled: true };
        old.learn_sub(Path::new("/dl"), "tv");
        assert_eq!((old.sub.as_str(), old.root()), ("tv", Path::new("/dl")));
        let mut elsewhere = Place { dir: "/srv/tv".into(), sub: String::new(), name: "x".into(), settled: true };
        elsewhere.learn_sub(Path::new("/dl"), "tv");
        assert_eq!((elsewhere.sub.as_str(), elsewhere.root()), ("", Path::new("/srv/tv")));
    }

    #[test]
    fn a_place_round_trips_a_folder_that_is_not_utf8() {
        let dir = PathBuf::from(OsString::from_vec(b"/srv/t\xffv".to_vec()));
        let p = Place { dir, sub: String::new(), name: "x".into(), settled: true };
        let bytes = serde_bencode::to_bytes(&p).unwrap();
        assert_eq!(serde_bencode::from_bytes::<Place>(&bytes).unwrap(), p);
    }
}
