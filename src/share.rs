//! A torrent's own share limits (qBittorrent's `ratioLimit`,
//! `seedingTimeLimit`, `inactiveSeedingTimeLimit`), kept in its resume
//! record, and the limits that hold for it once the config's
//! (`[seeding]`, `[categories.NAME]`) are taken into account.
//!
//! Why a module: the API, the resume record and the seeding check all
//! speak these, and qBittorrent's numbers (-2 = the global limit, -1 = no
//! limit) are turned into an enum here, once.

use crate::config::SeedLimits;
use serde::{Deserialize, Serialize};

/// One limit as qBittorrent sends it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "i64", into = "i64")]
pub enum ShareLimit {
    /// The config's limit (the category's, else `[seeding]`): qBittorrent's -2.
    #[default]
    Global,
    /// No limit for this torrent: qBittorrent's -1.
    Unlimited,
    /// This value (thousandths of a ratio, or minutes).
    At(u64),
}

impl From<i64> for ShareLimit {
    fn from(v: i64) -> ShareLimit {
        match v {
            -1 => ShareLimit::Unlimited,
            v if v >= 0 => ShareLimit::At(v as u64),
            _ => ShareLimit::Global,
        }
    }
}

impl From<ShareLimit> for i64 {
    fn from(l: ShareLimit) -> i64 {
        match l {
            ShareLimit::Global => -2,
            ShareLimit::Unlimited => -1,
            ShareLimit::At(v) => v.min(i64::MAX as u64) as i64,
        }
    }
}

/// The largest ratio limit taken (qBittorrent's own cap).
pub const MAX_RATIO: f64 = 9998.0;
/// The longest time limit taken, in minutes (qBittorrent's: 525,600, a year).
pub const MAX_MINUTES: i64 = 525_600;

/// A torrent's own limits; every one `Global` unless set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareLimits {
    /// In thousandths (bencode has no floats).
    #[serde(default)]
    pub ratio_milli: ShareLimit,
    #[serde(default)]
    pub seeding_minutes: ShareLimit,
    #[serde(default)]
    pub inactive_minutes: ShareLimit,
}

impl ShareLimits {
    /// From the API's values (a ratio, minutes, minutes); None for a
    /// value qBittorrent would refuse, with the parameter named.
    pub fn from_api(ratio: f64, seeding: i64, inactive: i64) -> Result<ShareLimits, String> {
        let ratio_milli = if ratio == -2.0 {
            ShareLimit::Global
        } else if ratio == -1.0 {
            ShareLimit::Unlimited
        } else if (0.0..=MAX_RATIO).contains(&ratio) {
            ShareLimit::At((ratio * 1000.0).round() as u64)
        } else {
            return Err(format!("ratioLimit: {ratio} is not -2 (global), -1 (no limit) or 0 to {MAX_RATIO}"));
        };
        let minutes = |name: &str, v: i64| match v {
            -2 => Ok(ShareLimit::Global),
            -1 => Ok(ShareLimit::Unlimited),
            v if (0..=MAX_MINUTES).contains(&v) => Ok(ShareLimit::At(v as u64)),
            v => Err(format!("{name}: {v} is not -2 (global), -1 (no limit) or 0 to {MAX_MINUTES} minutes")),
        };
        Ok(ShareLimits {
            ratio_milli,
            seeding_minutes: minutes("seedingTimeLimit", seeding)?,
            inactive_minutes: minutes("inactiveSeedingTimeLimit", inactive)?,
        })
    }

    /// The limits that hold, given the config's for the torrent's category.
    pub fn effective(&self, config: SeedLimits) -> Effective {
        // The config says 0 for "no limit"; a torrent's own 0 is a limit
        // reached at once, as in qBittorrent.
        let pick = |own: ShareLimit, global: Option<f64>, unit: f64| match own {
            ShareLimit::Global => global,
            ShareLimit::Unlimited => None,
            ShareLimit::At(v) => Some(v as f64 * unit),
        };
        let secs = |v: u64| (v > 0).then_some(v as f64);
        Effective {
            ratio: pick(self.ratio_milli, (config.ratio > 0.0).then_some(config.ratio), 0.001),
            seeding_secs: pick(self.seeding_minutes, secs(config.time_secs), 60.0).map(|s| s as u64),
            idle_secs: pick(self.inactive_minutes, secs(config.idle_secs), 60.0).map(|s| s as u64),
        }
    }
}

/// The limits that hold for one torrent; None = no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Effective {
    pub ratio: Option<f64>,
    pub seeding_secs: Option<u64>,
    pub idle_secs: Option<u64>,
}

/// What `status` and the API show of a torrent's limits: its own (as
/// qBittorrent numbers) and those that hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsView {
    pub own: ShareLimits,
    pub effective: Effective,
}

impl LimitsView {
    /// qBittorrent's `ratio_limit`: -2 global, -1 none, else the ratio.
    pub fn ratio_limit(&self) -> f64 {
        match self.own.ratio_milli {
            ShareLimit::At(m) => m as f64 / 1000.0,
            other => i64::from(other) as f64,
        }
    }

    /// `seeding_time_limit` in minutes (-2 global, -1 none).
    pub fn seeding_time_limit(&self) -> i64 {
        self.own.seeding_minutes.into()
    }

    /// `inactive_seeding_time_limit` in minutes (-2 global, -1 none).
    pub fn inactive_seeding_time_limit(&self) -> i64 {
        self.own.inactive_minutes.into()
    }

    /// `max_ratio`: the ratio limit that holds, -1 for none.
    pub fn max_ratio(&self) -> f64 {
        self.effective.ratio.unwrap_or(-1.0)
    }

    /// `max_seeding_time`: the limit that holds in minutes, -1 for none.
    pub fn max_seeding_time(&self) -> i64 {
        self.effective.seeding_secs.map_or(-1, |s| (s / 60) as i64)
    }

    /// `max_inactive_seeding_time`: in minutes, -1 for none.
    pub fn max_inactive_seeding_time(&self) -> i64 {
        self.effective.idle_secs.map_or(-1, |s| (s / 60) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: SeedLimits = SeedLimits { ratio: 2.0, time_secs: 3600, idle_secs: 0 };

    #[test]
    fn qbittorrent_numbers_map_to_limits() {
        let l = ShareLimits::from_api(-2.0, -1, 30).unwrap();
        assert_eq!(l.ratio_milli, ShareLimit::Global);
        assert_eq!(l.seeding_minutes, ShareLimit::Unlimited);
        assert_eq!(l.inactive_minutes, ShareLimit::At(30));
        assert_eq!(l.effective(CONFIG), Effective { ratio: Some(2.0), seeding_secs: None, idle_secs: Some(1800) });
        let zero = ShareLimits::from_api(0.0, -2, -2).unwrap();
        assert_eq!(zero.effective(CONFIG).ratio, Some(0.0), "a ratio limit of 0 is reached at once");
        assert_eq!(ShareLimits::default().effective(CONFIG).seeding_secs, Some(3600));
        for bad in [(-3.0, -2, -2), (f64::NAN, -2, -2), (1e9, -2, -2), (1.0, -5, -2), (1.0, -2, MAX_MINUTES + 1)] {
            assert!(ShareLimits::from_api(bad.0, bad.1, bad.2).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_survive_bencode() {
        let l = ShareLimits::from_api(1.5, -1, -2).unwrap();
        let bytes = serde_bencode::to_bytes(&l).unwrap();
        assert_eq!(serde_bencode::from_bytes::<ShareLimits>(&bytes).unwrap(), l);
    }
}
