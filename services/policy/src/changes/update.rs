//! The `agent.update` intent, which is also the update policy of the nodes it
//! selects: the agent version they should run, and how it gets there (`manual`:
//! every update is a plan someone approves; `auto`: the policy service renders and
//! approves the plan itself inside a maintenance window), canary first, halting on
//! the first failure.
//!
//! ```json
//! {"version": "1.4.0", "mode": "auto", "canary": 2,
//!  "window": {"days": ["sat", "sun"], "start": "02:00", "end": "05:00"}}
//! ```
//!
//! The plan's artifact per node is the release's manifest for the node's
//! architecture (version, arch, hash, size, signature; see
//! `lattice_proto::release`): what the agent verifies before it replaces itself.

use std::collections::BTreeSet;

use serde_json::Value;

use super::firewall::unknown_fields;
use super::{Problem, Problems};

/// Largest canary wave.
pub const MAX_CANARY: usize = 1_000;

/// How an update is approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every update is a plan someone approves.
    Manual,
    /// Rendered and approved by the policy service inside the window.
    Auto,
}

/// A weekly maintenance window, in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Days it opens on: 0 is Monday.
    pub days: BTreeSet<u8>,
    /// Opens at, minutes after midnight.
    pub start: u32,
    /// Closes at, minutes after midnight (at or before `start`: the next day).
    pub end: u32,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn minutes(v: Option<&Value>, field: &str, problems: &mut Problems) -> u32 {
    let s = v.and_then(Value::as_str).unwrap_or_default();
    let parsed = s.split_once(':').and_then(|(h, m)| {
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
    });
    parsed.unwrap_or_else(|| {
        problems.push(Problem::new(field, "a UTC time HH:MM, e.g. 02:00"));
        0
    })
}

impl Window {
    /// Whether the window is open at `unix_ms`.
    pub fn open_at(&self, unix_ms: i64) -> bool {
        let day_ms = 86_400_000;
        let days = unix_ms.div_euclid(day_ms);
        // 1970-01-01 was a Thursday (3 with Monday as 0).
        let today = u8::try_from((days + 3).rem_euclid(7)).unwrap_or(0);
        let yesterday = (today + 6) % 7;
        let now = u32::try_from(unix_ms.rem_euclid(day_ms) / 60_000).unwrap_or(0);
        if self.start < self.end {
            self.days.contains(&today) && (self.start..self.end).contains(&now)
        } else {
            (self.days.contains(&today) && now >= self.start)
                || (self.days.contains(&yesterday) && now < self.end)
        }
    }
}

/// A validated `agent.update` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUpdate {
    /// The release the nodes should run.
    pub version: String,
    /// How it is approved.
    pub mode: Mode,
    /// When `auto` may act (required for `auto`).
    pub window: Option<Window>,
    /// Nodes in the first wave.
    pub canary: usize,
}

impl AgentUpdate {
    /// Validate `spec`, naming every bad field.
    pub fn parse(spec: &Value) -> Result<Self, Problems> {
        let mut problems = Problems::default();
        let Some(m) = spec.as_object() else {
            problems.push(Problem::new(
                "spec",
                "an object {\"version\", \"mode\", \"window\", \"canary\"}",
            ));
            return Err(problems);
        };
        unknown_fields(
            m,
            "spec",
            &["version", "mode", "window", "canary"],
            &mut problems,
        );
        let version = m.get("version").and_then(Value::as_str).unwrap_or_default();
        if !lattice_proto::release::valid_version(version) {
            problems.push(Problem::new(
                "spec.version",
                "required: a release version such as 1.4.0 or 1.4.0-rc.1",
            ));
        }
        let mode = match m.get("mode").map(Value::as_str) {
            None | Some(Some("manual")) => Mode::Manual,
            Some(Some("auto")) => Mode::Auto,
            Some(_) => {
                problems.push(Problem::new("spec.mode", "manual or auto"));
                Mode::Manual
            }
        };
        let canary = match m.get("canary") {
            None => 1,
            Some(v) => match v.as_u64().and_then(|c| usize::try_from(c).ok()) {
                Some(c) if (1..=MAX_CANARY).contains(&c) => c,
                _ => {
                    problems.push(Problem::new("spec.canary", format!("1-{MAX_CANARY} nodes")));
                    1
                }
            },
        };
        let window = match m.get("window") {
            None => None,
            Some(Value::Object(w)) => {
                unknown_fields(w, "spec.window", &["days", "start", "end"], &mut problems);
                let days = match w.get("days") {
                    None => (0..7).collect(),
                    Some(Value::Array(ds)) if !ds.is_empty() => {
                        let mut out = BTreeSet::new();
                        for (i, d) in ds.iter().enumerate() {
                            match d.as_str().and_then(|d| DAYS.iter().position(|x| *x == d)) {
                                Some(n) => {
                                    out.insert(u8::try_from(n).unwrap_or(0));
                                }
                                None => problems.push(Problem::new(
                                    &format!("spec.window.days[{i}]"),
                                    "one of mon, tue, wed, thu, fri, sat, sun",
                                )),
                            }
                        }
                        out
                    }
                    Some(_) => {
                        problems.push(Problem::new(
                            "spec.window.days",
                            "a non-empty list of days (mon ... sun)",
                        ));
                        BTreeSet::new()
                    }
                };
                let start = minutes(w.get("start"), "spec.window.start", &mut problems);
                let end = minutes(w.get("end"), "spec.window.end", &mut problems);
                Some(Window { days, start, end })
            }
            Some(_) => {
                problems.push(Problem::new(
                    "spec.window",
                    "an object {\"days\", \"start\", \"end\"} (UTC)",
                ));
                None
            }
        };
        if mode == Mode::Auto
            && window.is_none()
            && !problems
                .0
                .iter()
                .any(|p| p.field.starts_with("spec.window"))
        {
            problems.push(Problem::new(
                "spec.window",
                "required for mode auto: when updates may happen",
            ));
        }
        if problems.is_empty() {
            Ok(Self {
                version: version.to_owned(),
                mode,
                window,
                canary,
            })
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn specs_are_validated_field_by_field() {
        let u = AgentUpdate::parse(&json!({"version": "1.4.0"})).unwrap();
        assert_eq!((u.mode, u.canary, u.window), (Mode::Manual, 1, None));
        let err =
            AgentUpdate::parse(&json!({"version": "v1", "mode": "auto", "canary": 0, "x": 1}))
                .unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.x", "spec.version", "spec.canary", "spec.window"],
            "{err}"
        );
        let err = AgentUpdate::parse(&json!({"version": "1.0.0", "mode": "auto",
            "window": {"days": ["mon", "someday"], "start": "25:00", "end": "2:00"}}))
        .unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.window.days[1]",
                "spec.window.start",
                "spec.window.end"
            ],
            "{err}"
        );
    }

    #[test]
    fn windows_open_on_their_days_and_hours_in_utc() {
        // 2026-12-05 was a Saturday.
        let sat = 1_796_428_800_000_i64; // 2026-12-05T00:00:00Z
        let at = |day: i64, h: i64, m: i64| sat + day * 86_400_000 + (h * 60 + m) * 60_000;
        let w = Window {
            days: [5].into(),
            start: 120,
            end: 300,
        };
        assert!(!w.open_at(at(0, 1, 59)));
        assert!(w.open_at(at(0, 2, 0)));
        assert!(w.open_at(at(0, 4, 59)));
        assert!(!w.open_at(at(0, 5, 0)));
        assert!(!w.open_at(at(1, 3, 0)), "Sunday");
        // Across midnight: Saturday 23:00 to Sunday 01:00.
        let w = Window {
            days: [5].into(),
            start: 23 * 60,
            end: 60,
        };
        assert!(w.open_at(at(0, 23, 30)));
        assert!(w.open_at(at(1, 0, 30)));
        assert!(!w.open_at(at(1, 1, 0)));
        assert!(
            !w.open_at(at(-1, 0, 30)),
            "Friday night is not Saturday's window"
        );
    }
}
