//! `app/setPreferences` and `transfer/set{Download,Upload}Limit`: what
//! dropseed can change at run time, applied the way a config reload
//! applies it (`Session::set_config`: the rate limiters, the download
//! queue's size, the share limits the torrents read).
//!
//! Why a module: the mapping from qBittorrent's fields to dropseed's config
//! is pure and tested here; nothing is written to the user's config file,
//! so a restart or a SIGHUP brings the file's values back (docs/api.md says
//! so). Fields dropseed cannot honour are ignored, as qBittorrent ignores
//! unknown ones, and named in an INFO line; a value of the wrong type or
//! out of range is refused (400) naming its field, and nothing changes.

use crate::config::{ByteSize, Config, LimitAction, Span};
use serde_json::{Map, Value};

/// The preferences dropseed honours.
pub const HONOURED: &[&str] = &[
    "dl_limit",
    "up_limit",
    "queueing_enabled",
    "max_active_downloads",
    "max_ratio_enabled",
    "max_ratio",
    "max_seeding_time_enabled",
    "max_seeding_time",
    "max_inactive_seeding_time_enabled",
    "max_inactive_seeding_time",
    "max_ratio_act",
];

/// A config with `fields` applied to `c`, and the names of the fields
/// ignored; or why the request is refused.
pub fn apply(c: &Config, fields: &Map<String, Value>) -> Result<(Config, Vec<String>), String> {
    let mut n = c.clone();
    if let Some(v) = int(fields, "dl_limit")? {
        n.limits.download_rate = ByteSize(v.max(0) as u64);
    }
    if let Some(v) = int(fields, "up_limit")? {
        n.limits.upload_rate = ByteSize(v.max(0) as u64);
    }
    let queueing = flag(fields, "queueing_enabled")?;
    let active = int(fields, "max_active_downloads")?;
    n.limits.max_active_downloads = match (queueing, active) {
        (Some(false), _) => 0,
        (_, Some(a)) if a < 0 => 0,
        (_, Some(a)) => usize::try_from(a).map_err(|_| "max_active_downloads: too large".to_string())?,
        (Some(true), None) if c.limits.max_active_downloads == 0 => 5,
        _ => c.limits.max_active_downloads,
    };
    if active == Some(0) && queueing == Some(true) {
        return Err("max_active_downloads: must be at least 1 with queueing_enabled".into());
    }
    let ratio = number(fields, "max_ratio")?;
    match flag(fields, "max_ratio_enabled")? {
        Some(false) => n.seeding.ratio_limit = 0.0,
        _ => {
            if let Some(r) = ratio {
                n.seeding.ratio_limit = r.max(0.0);
            }
        }
    }
    n.seeding.seed_time_limit = minutes(fields, "max_seeding_time", c.seeding.seed_time_limit)?;
    n.seeding.idle_seed_limit = minutes(fields, "max_inactive_seeding_time", c.seeding.idle_seed_limit)?;
    match int(fields, "max_ratio_act")? {
        None => {}
        Some(0) => n.seeding.action = LimitAction::Stop,
        Some(1) => n.seeding.action = LimitAction::Remove,
        Some(other) => return Err(format!("max_ratio_act: {other} is not 0 (stop) or 1 (remove)")),
    }
    n.validate().map_err(|(key, why)| format!("{key}: {why}"))?;
    let ignored = fields.keys().filter(|k| !HONOURED.contains(&k.as_str())).cloned().collect();
    Ok((n, ignored))
}

/// A time limit in minutes (`NAME`, with `NAME_enabled`); -1 or off: none.
fn minutes(fields: &Map<String, Value>, name: &str, now: Span) -> Result<Span, String> {
    let enabled = flag(fields, &format!("{name}_enabled"))?;
    let mins = int(fields, name)?;
    Ok(match (enabled, mins) {
        (Some(false), _) => Span(0),
        (_, Some(m)) if m <= 0 => Span(0),
        (_, Some(m)) => Span((m as u64).min(100 * 365 * 24 * 60) * 60),
        _ => now,
    })
}

fn int(fields: &Map<String, Value>, name: &str) -> Result<Option<i64>, String> {
    match fields.get(name) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| format!("{name}: not a whole number")),
    }
}

fn number(fields: &Map<String, Value>, name: &str) -> Result<Option<f64>, String> {
    match fields.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().filter(|f| f.is_finite()).map(Some).ok_or_else(|| format!("{name}: not a number")),
    }
}

fn flag(fields: &Map<String, Value>, name: &str) -> Result<Option<bool>, String> {
    match fields.get(name) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| format!("{name}: not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_honoured_fields_change_the_config_and_the_rest_are_named() {
        let c = Config::default();
        let (n, ignored) = apply(
            &c,
            &map(json!({"dl_limit": 1000, "up_limit": -1, "max_active_downloads": 2, "max_ratio_enabled": true,
                "max_ratio": 1.5, "max_seeding_time_enabled": true, "max_seeding_time": 90, "max_ratio_act": 1,
                "upnp": true, "save_path": "/elsewhere"})),
        )
        .unwrap();
        assert_eq!((n.limits.download_rate.0, n.limits.upload_rate.0, n.limits.max_active_downloads), (1000, 0, 2));
        assert_eq!((n.seeding.ratio_limit, n.seeding.seed_time_limit.0), (1.5, 5400));
        assert_eq!(n.seeding.action, LimitAction::Remove);
        assert_eq!(n.paths, c.paths, "the paths stay");
        assert_eq!(ignored, ["save_path", "upnp"]);
        let (off, _) = apply(&n, &map(json!({"queueing_enabled": false, "max_ratio_enabled": false}))).unwrap();
        assert_eq!((off.limits.max_active_downloads, off.seeding.ratio_limit), (0, 0.0));
        let (on, _) = apply(&off, &map(json!({"queueing_enabled": true}))).unwrap();
        assert_eq!(on.limits.max_active_downloads, 5);
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let c = Config::default();
        for (body, says) in [
            (json!({"dl_limit": "fast"}), "dl_limit"),
            (json!({"max_ratio": "x"}), "max_ratio"),
            (json!({"queueing_enabled": 1}), "queueing_enabled"),
            (json!({"max_ratio_act": 3}), "max_ratio_act"),
            (json!({"queueing_enabled": true, "max_active_downloads": 0}), "at least 1"),
        ] {
            let e = apply(&c, &map(body)).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
