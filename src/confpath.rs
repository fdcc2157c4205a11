//! Which config file applies, and where its paths point.
//!
//! The daemon and the CLI look for the config the same way, so that
//! `dropseed status` finds the daemon that `dropseed run` started: `-c FILE`,
//! else the file named by `DROPSEED_CONFIG`, else [`SYSTEM_CONFIG`] when it
//! exists, else the built-in defaults.
//!
//! Relative paths in a config file are taken from the file's directory, never
//! from the working directory of whoever reads it; with the built-in
//! defaults they are taken from the working directory (there is no file).
//! A path starting with `~/` (or `~` alone) is expanded to `$HOME` of the
//! user running dropseed, and the daemon logs each expansion at start;
//! `~user/` forms, and `~` with no `HOME` set, are refused by key.

use crate::config::{Config, ConfigError};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The config file used when neither `-c` nor `DROPSEED_CONFIG` names one.
pub const SYSTEM_CONFIG: &str = "/etc/dropseed/dropseed.toml";
/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "DROPSEED_CONFIG";

/// Where the config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `-c FILE` on the command line.
    Flag(PathBuf),
    /// `DROPSEED_CONFIG`.
    Env(PathBuf),
    /// [`SYSTEM_CONFIG`], found present.
    System(PathBuf),
    /// No file: built-in defaults, relative paths from this directory.
    Defaults(PathBuf),
}

impl Source {
    /// The file, if there is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Source::Flag(p) | Source::Env(p) | Source::System(p) => Some(p),
            Source::Defaults(_) => None,
        }
    }

    /// How the user would say where this came from.
    pub fn describe(&self) -> String {
        match self {
            Source::Flag(p) => format!("{} (from -c)", p.display()),
            Source::Env(p) => format!("{} (from {CONFIG_ENV})", p.display()),
            Source::System(p) => format!("{} (the system config)", p.display()),
            Source::Defaults(cwd) => format!(
                "no config file (no -c, no {CONFIG_ENV}, no {SYSTEM_CONFIG}): built-in defaults, \
                 relative paths from {}",
                cwd.display()
            ),
        }
    }
}

/// Picks the config: `flag`, else `env`, else `system` if it exists, else
/// defaults in `cwd`. Relative file names are made absolute against `cwd`.
pub fn locate(flag: Option<&Path>, env: Option<OsString>, system: &Path, cwd: &Path) -> Source {
    if let Some(p) = flag {
        return Source::Flag(cwd.join(p));
    }
    if let Some(p) = env.filter(|v| !v.is_empty()) {
        return Source::Env(cwd.join(p));
    }
    if system.is_file() {
        return Source::System(system.to_path_buf());
    }
    Source::Defaults(cwd.to_path_buf())
}

/// The config as found from the process's own arguments and environment.
pub fn locate_here(flag: Option<&Path>) -> Result<Source, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot tell the working directory: {e}"))?;
    Ok(locate(flag, std::env::var_os(CONFIG_ENV), Path::new(SYSTEM_CONFIG), &cwd))
}

/// A config read and resolved, with what was expanded on the way.
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    /// One line per `~` expanded, for the daemon to log.
    pub notes: Vec<String>,
}

/// Reads the config `source` names and makes its paths absolute.
pub fn load(source: Source) -> Result<Loaded, ConfigError> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let (mut config, base, file) = match &source {
        Source::Defaults(cwd) => (Config::default(), cwd.clone(), PathBuf::from("(built-in defaults)")),
        Source::Env(p) if !p.exists() => {
            return Err(ConfigError::Read {
                path: p.clone(),
                err: std::io::Error::new(std::io::ErrorKind::NotFound, format!("no such file (named by {CONFIG_ENV})")),
            })
        }
        other => {
            let p = other.file().expect("a file source").to_path_buf();
            (Config::load_unresolved(&p)?, p.parent().unwrap_or(Path::new("/")).to_path_buf(), p)
        }
    };
    let notes = resolve(&mut config, &base, home.as_deref()).map_err(|(key, msg)| ConfigError::Invalid {
        path: file.clone(),
        key,
        msg,
    })?;
    if !config.paths.socket_group.is_empty() {
        crate::perms::group_id(&config.paths.socket_group).map_err(|msg| ConfigError::Invalid {
            path: file,
            key: "paths.socket_group",
            msg,
        })?;
    }
    Ok(Loaded { config, source, notes })
}

/// Makes every path of `config` absolute: `~` from `home`, relative ones
/// from `base`. Returns a line per `~` expanded.
pub fn resolve(config: &mut Config, base: &Path, home: Option<&Path>) -> Result<Vec<String>, (&'static str, String)> {
    let p = &mut config.paths;
    let mut notes = Vec::new();
    for (key, path) in [
        ("paths.watch_dir", &mut p.watch_dir),
        ("paths.download_dir", &mut p.download_dir),
        ("paths.incomplete_dir", &mut p.incomplete_dir),
        ("paths.state_dir", &mut p.state_dir),
        ("paths.log_dir", &mut p.log_dir),
    ] {
        if key == "paths.incomplete_dir" && path.as_os_str().is_empty() {
            continue; // "" turns it off; it is not the config's folder
        }
        let resolved = resolve_one(path, base, home).map_err(|e| (key, e))?;
        if path.starts_with("~") {
            notes.push(format!("{key} = {:?} is {} (~ is $HOME)", path.display(), resolved.display()));
        }
        *path = resolved;
    }
    for (name, c) in config.categories.iter_mut() {
        if let Some(dir) = c.download_dir.as_mut() {
            let resolved =
                resolve_one(dir, base, home).map_err(|e| ("categories", format!("[categories.{name}] {e}")))?;
            *dir = resolved;
        }
    }
    Ok(notes)
}

fn resolve_one(path: &Path, base: &Path, home: Option<&Path>) -> Result<PathBuf, String> {
    let text = path.to_string_lossy();
    if path.starts_with("~") {
        let home = home.ok_or_else(|| format!("'{text}' starts with ~ but HOME is not set; write the full path"))?;
        let rest = path.strip_prefix("~").expect("starts with ~");
        return Ok(home.join(rest));
    }
    if text.starts_with('~') {
        return Err(format!("'{text}': only ~ and ~/ are expanded (to $HOME), not ~user; write the full path"));
    }
    Ok(base.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_then_the_environment_then_the_system_file_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system.toml");
        let cwd = Path::new("/work/here");
        let env = || Some(OsString::from("env.toml"));
        assert_eq!(locate(Some(Path::new("a.toml")), env(), &system, cwd), Source::Flag(cwd.join("a.toml")));
        assert_eq!(locate(None, env(), &system, cwd), Source::Env(cwd.join("env.toml")));
        assert_eq!(locate(None, Some(OsString::new()), &system, cwd), Source::Defaults(cwd.into()));
        assert_eq!(locate(None, None, &system, cwd), Source::Defaults(cwd.into()));
        std::fs::write(&system, "").unwrap();
        assert_eq!(locate(None, None, &system, cwd), Source::System(system.clone()));
        assert_eq!(locate(Some(Path::new("/abs.toml")), None, &system, cwd), Source::Flag("/abs.toml".into()));
    }

    #[test]
    fn paths_are_made_absolute_from_the_base_and_home() {
        let mut c = Config::default();
        c.paths.watch_dir = "~/w".into();
        c.paths.download_dir = "/data/dl".into();
        c.paths.log_dir = "~".into();
        let notes = resolve(&mut c, Path::new("/etc/dropseed"), Some(Path::new("/home/seed"))).unwrap();
        assert_eq!(c.paths.watch_dir, Path::new("/home/seed/w"));
        assert_eq!(c.paths.download_dir, Path::new("/data/dl"));
        assert_eq!(c.paths.state_dir, Path::new("/etc/dropseed/dropseed-data/state"));
        assert_eq!(c.paths.incomplete_dir, Path::new("/etc/dropseed/dropseed-data/incomplete"));
        assert_eq!(c.paths.log_dir, Path::new("/home/seed"));
        assert_eq!(notes.len(), 2);
        // "" (download in place) stays off.
        c.paths.incomplete_dir = "".into();
        resolve(&mut c, Path::new("/etc/dropseed"), None).unwrap();
        assert!(c.paths.incomplete_dir.as_os_str().is_empty());
        assert!(notes[0].contains("paths.watch_dir") && notes[0].contains("/home/seed/w"), "{notes:?}");
    }

    #[test]
    fn tilde_forms_we_do_not_expand_are_refused_by_key() {
        let mut c = Config::default();
        c.paths.state_dir = "~seed/state".into();
        let (key, msg) = resolve(&mut c, Path::new("/"), Some(Path::new("/home/seed"))).unwrap_err();
        assert_eq!(key, "paths.state_dir");
        assert!(msg.contains("~seed"), "{msg}");
        let mut c = Config::default();
        c.paths.log_dir = "~/logs".into();
        let (key, msg) = resolve(&mut c, Path::new("/"), None).unwrap_err();
        assert_eq!(key, "paths.log_dir");
        assert!(msg.contains("HOME"), "{msg}");
    }
}
