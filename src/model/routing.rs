//! Which versions of a model serve, and which one a request gets when it names none.
//!
//! The version policy (`--version-policy`, after Triton's `version_policy`) picks the versions
//! found in the repository that are loaded: all of them, the newest N, or a fixed list. The
//! configuration file's `[[versions]]` tables route a station or a line to a version, so a
//! canary station runs version 2 while the rest of the plant stays on version 1; a request's
//! own `model_version` always wins, and a routed version that is not loaded falls back to the
//! newest.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Which discovered versions of each model are loaded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VersionPolicy {
    /// Every version folder.
    #[default]
    All,
    /// The newest N versions of each model.
    Latest(usize),
    /// These versions, where present.
    Specific(Vec<u64>),
}

impl VersionPolicy {
    /// Parses `all`, `latest:N` or `specific:1,3`.
    pub fn parse(text: &str) -> Result<VersionPolicy, String> {
        let text = text.trim();
        let usage = || {
            format!("{text:?} is not a version policy; give all, latest:N (N ≥ 1) or specific:1,3")
        };
        if text == "all" {
            return Ok(VersionPolicy::All);
        }
        if let Some(n) = text.strip_prefix("latest:") {
            return match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(VersionPolicy::Latest(n)),
                _ => Err(usage()),
            };
        }
        if let Some(list) = text.strip_prefix("specific:") {
            let versions: Vec<u64> = list
                .split(',')
                .map(|v| v.trim().parse::<u64>().map_err(|_| usage()))
                .collect::<Result<_, _>>()?;
            return Ok(VersionPolicy::Specific(versions));
        }
        Err(usage())
    }

    /// Keeps the items whose (model, version) the policy loads; `key` names each item.
    pub fn select<T>(&self, items: Vec<T>, key: impl Fn(&T) -> (&str, u64)) -> Vec<T> {
        let mut newest: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for item in &items {
            let (name, version) = key(item);
            newest.entry(name.to_string()).or_default().push(version);
        }
        for versions in newest.values_mut() {
            versions.sort_unstable_by(|a, b| b.cmp(a));
        }
        items
            .into_iter()
            .filter(|item| {
                let (name, version) = key(item);
                match self {
                    VersionPolicy::All => true,
                    VersionPolicy::Latest(n) => newest
                        .get(name)
                        .is_some_and(|v| v.iter().take(*n).any(|&kept| kept == version)),
                    VersionPolicy::Specific(list) => list.contains(&version),
                }
            })
            .collect()
    }
}

impl fmt::Display for VersionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionPolicy::All => f.write_str("all"),
            VersionPolicy::Latest(n) => write!(f, "latest:{n}"),
            VersionPolicy::Specific(list) => {
                let list: Vec<String> = list.iter().map(u64::to_string).collect();
                write!(f, "specific:{}", list.join(","))
            }
        }
    }
}

/// One `[[versions]]` table: the version a station or a line gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRoute {
    /// The station it applies to (exactly one of `station` and `line`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
    /// The line it applies to: requests whose `line` metadata field is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// Only this model (every model when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The version those requests get.
    pub version: u64,
}

impl VersionRoute {
    /// Checks that the entry names one station or one line.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (&self.station, &self.line) {
            (Some(_), Some(_)) => bail!("a [[versions]] entry names a station or a line, not both"),
            (None, None) => bail!("a [[versions]] entry names a station or a line"),
            _ => Ok(()),
        }
    }

    fn applies(&self, model: &str) -> bool {
        self.model.as_deref().is_none_or(|m| m == model)
    }
}

/// The version `model` should run for a request from `station` on `line` that names none:
/// a station's route beats its line's; None when no route applies.
pub fn routed_version(
    routes: &[VersionRoute],
    model: &str,
    station: &str,
    line: Option<&str>,
) -> Option<u64> {
    let by_station = routes
        .iter()
        .find(|r| r.applies(model) && r.station.as_deref() == Some(station));
    let by_line = || {
        routes
            .iter()
            .find(|r| r.applies(model) && line.is_some() && r.line.as_deref() == line)
    };
    by_station.or_else(by_line).map(|r| r.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_pick_versions() {
        let found = vec![("a", 1), ("a", 3), ("a", 2), ("b", 7)];
        let pick = |policy: &str| {
            VersionPolicy::parse(policy)
                .unwrap()
                .select(found.clone(), |(n, v)| (*n, *v))
        };
        assert_eq!(pick("all"), found);
        assert_eq!(pick("latest:2"), vec![("a", 3), ("a", 2), ("b", 7)]);
        assert_eq!(pick("specific:1,7"), vec![("a", 1), ("b", 7)]);
        for bad in [
            "latest:0",
            "latest:x",
            "specific:",
            "newest",
            "specific:1,a",
        ] {
            assert!(VersionPolicy::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(VersionPolicy::Latest(2).to_string(), "latest:2");
    }

    #[test]
    fn a_station_route_beats_its_line_and_models_are_respected() {
        let route =
            |station: Option<&str>, line: Option<&str>, model: Option<&str>, v| VersionRoute {
                station: station.map(String::from),
                line: line.map(String::from),
                model: model.map(String::from),
                version: v,
            };
        let routes = vec![
            route(None, Some("L3"), None, 1),
            route(Some("aoi-07"), None, Some("kensa-demo"), 2),
        ];
        assert_eq!(
            routed_version(&routes, "kensa-demo", "aoi-07", Some("L3")),
            Some(2)
        );
        assert_eq!(
            routed_version(&routes, "other", "aoi-07", Some("L3")),
            Some(1)
        );
        assert_eq!(routed_version(&routes, "kensa-demo", "aoi-08", None), None);
        assert!(route(Some("s"), Some("l"), None, 1).validate().is_err());
        assert!(route(None, None, None, 1).validate().is_err());
    }
}
