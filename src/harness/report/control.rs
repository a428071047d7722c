//! The control plane's figures in a report: the load a run was measured
//! under (API updates, a monitor attached) and the latency of single
//! updates. The serde field names are part of the JSON schema, like the
//! rest of the report's.

use serde::{Deserialize, Serialize};

/// The API updates a client applied while a run's traffic flowed
/// ([`super::Run::updates`], kind `xpf-updates`): the rates asked for and
/// the rates reached, each over the seconds the client ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateLoad {
    /// How long the client applied updates, in seconds.
    pub seconds: f64,
    /// `POST /v1/reload` a second, asked for.
    pub reloads_asked_per_sec: f64,
    /// `POST /v1/reload` a second, answered 200.
    pub reloads_per_sec: f64,
    /// `PUT /v1/ipcache` a second, asked for.
    pub upserts_asked_per_sec: f64,
    /// `PUT /v1/ipcache` a second, answered 200.
    pub upserts_per_sec: f64,
    /// `DELETE /v1/ipcache` a second (answered 200) that kept the table
    /// size flat: one per upsert once the window is full.
    pub deletes_per_sec: f64,
    /// Calls refused or not answered.
    pub errors: u64,
}

/// A monitor attached while a run's traffic flowed ([`super::Run::monitor`],
/// kind `xpf-monitor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorLoad {
    /// Lines the monitor read (flows and lost-event notes).
    pub lines: u64,
    /// Events the daemon said the monitor lost (`lost_events`).
    pub lost_events: u64,
}

/// p50, p99 and the largest of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    /// Nearest-rank percentiles of `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Spread> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let at = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Some(Spread {
            p50: at(0.50),
            p99: at(0.99),
            max: s[s.len() - 1],
        })
    }
}

/// How long one kind of update took, call by call, on a running datapath
/// with traffic flowing ([`super::Report::update_latency`]). An update's
/// answer comes once every worker enforces it, so the call's duration is
/// the latency from the call to enforcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateLatency {
    /// What was changed: `upsert`, `delete` or `reload`.
    pub update: String,
    /// The conditions: the point and the traffic delivered meanwhile.
    pub during: String,
    /// Calls measured.
    pub samples: u64,
    /// From the call to its answer, as the client saw it.
    pub call_ms: Spread,
    /// The daemon's own `applied_in_us` (a reload's excludes reading the
    /// config file), in milliseconds.
    pub applied_ms: Spread,
    /// The target on `call_ms.p99`, as text (e.g. "p99 ≤ 50 ms").
    pub target: Option<String>,
    /// Whether `call_ms.p99` meets `target`; `None` without a target.
    pub met: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_are_nearest_rank() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN]), None);
        let one = Spread::of(&[3.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (3.0, 3.0, 3.0));
        let hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Spread::of(&hundred).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (50.0, 99.0, 100.0));
        let s = Spread::of(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (5.0, 10.0, 10.0));
    }
}
