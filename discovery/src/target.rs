//! Which workloads to watch (`--target.namespace`, `--target.pod`,
//! `--target.pod-label`).
//!
//! Without any of them every workload is watched. With some, a workload is
//! watched when its pod passes every one given: its namespace is listed,
//! its name matches one of the pod patterns (anchored regexes), and its
//! labels satisfy the selector (Kubernetes syntax: `app=web`, `tier!=db`,
//! `env in (prod,staging)`, `track notin (canary)`, `release`, `!legacy`,
//! comma-separated, all must hold). Processes outside pods are then not
//! watched. Unwatched workloads are filtered in the kernel.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};

/// `[target]` of the configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TargetConfig {
    #[serde(deserialize_with = "list_or_csv", skip_serializing_if = "Vec::is_empty")]
    pub namespace: Vec<String>,
    #[serde(deserialize_with = "list_or_csv", skip_serializing_if = "Vec::is_empty")]
    pub pod: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_label: Option<String>,
}

/// A list, or one comma-separated string (flags and variables).
pub fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    let items = match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(l) => l,
        ListOrCsv::Csv(s) => s.split(',').map(str::to_string).collect(),
    };
    Ok(items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed Kubernetes equality- or set-based label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(v: &str) -> bool {
    v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let err = |why: &str| format!("label selector `{s}`: {why}");
        // Split on commas outside parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        for (i, ch) in s.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
            if depth < 0 {
                return Err(err("unbalanced `)`"));
            }
        }
        if depth != 0 {
            return Err(err("unbalanced `(`"));
        }
        parts.push(&s[start..]);

        let mut reqs = Vec::new();
        for raw in parts {
            let p = raw.trim();
            if p.is_empty() {
                return Err(err("empty requirement"));
            }
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| err(&format!("`{p}`: expected (v1,v2,...)")))?;
                let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
                if vals.iter().any(|v| v.is_empty() || !valid_value(v)) {
                    return Err(err(&format!("`{p}`: bad value in the set")));
                }
                Ok(vals)
            };
            let req = if let Some(k) = p.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Requirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, rest)) = p.split_once(" notin ") {
                Requirement::NotIn(k.trim().to_string(), set(rest)?)
            } else if let Some((k, rest)) = p.split_once(" in ") {
                Requirement::In(k.trim().to_string(), set(rest)?)
            } else {
                Requirement::Exists(p.to_string())
            };
            let (key, value) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
                Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => (k, None),
            };
            if !valid_key(key) {
                return Err(err(&format!("`{p}`: `{key}` is not a label key")));
            }
            if value.is_some_and(|v| !valid_value(v)) {
                return Err(err(&format!("`{p}`: bad value")));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// The compiled target selection.
#[derive(Debug, Default)]
pub struct Targets {
    namespaces: Vec<String>,
    pods: Vec<Regex>,
    labels: Option<LabelSelector>,
}

impl Targets {
    pub fn new(config: &TargetConfig) -> Result<Targets, String> {
        let pods = config
            .pod
            .iter()
            .map(|p| Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("target.pod `{p}`: {e}")))
            .collect::<Result<_, _>>()?;
        let labels =
            config.pod_label.as_deref().filter(|s| !s.trim().is_empty()).map(LabelSelector::parse).transpose()?;
        Ok(Targets { namespaces: config.namespace.clone(), pods, labels })
    }

    /// Is any selection given? Without one everything is watched and the
    /// kernel filters nothing.
    pub fn enabled(&self) -> bool {
        !self.namespaces.is_empty() || !self.pods.is_empty() || self.labels.is_some()
    }

    /// Are workloads outside pods (host processes, plain containers)
    /// watched? Only without a selection.
    pub fn selects_outside_pods(&self) -> bool {
        !self.enabled()
    }

    /// Is a pod with this namespace, name and labels watched? (Always,
    /// without a selection.)
    pub fn selects(&self, namespace: &str, name: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace))
            && (self.pods.is_empty() || self.pods.iter().any(|r| r.is_match(name)))
            && self.labels.as_ref().is_none_or(|s| s.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selector_syntax() {
        let s = LabelSelector::parse("app=web, tier!=db,env in (prod, staging),track notin (canary),release,!legacy")
            .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "front"), ("env", "prod"), ("release", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db"), ("env", "prod"), ("release", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("release", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod"), ("track", "canary"), ("release", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])), "release must exist");
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod"), ("release", "1"), ("legacy", "")])));
        assert!(LabelSelector::parse("app==web").unwrap().matches(&labels(&[("app", "web")])));
        assert!(
            LabelSelector::parse("app.kubernetes.io/name=x")
                .unwrap()
                .matches(&labels(&[("app.kubernetes.io/name", "x")]))
        );
    }

    #[test]
    fn bad_selectors_are_errors() {
        for bad in ["", "a=b,", "env in (prod", "env in prod", "a=b c", "env in (a,)", "=x", "a in ()"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} should not parse");
        }
        let e = LabelSelector::parse("env in (prod").unwrap_err();
        assert!(e.contains("unbalanced"), "{e}");
    }

    #[test]
    fn selection() {
        let none = Targets::new(&TargetConfig::default()).unwrap();
        assert!(!none.enabled());
        assert!(none.selects("any", "thing", &BTreeMap::new()));

        let t = Targets::new(&TargetConfig {
            namespace: vec!["shop".into(), "pay".into()],
            pod: vec!["frontend-.*".into(), "db-0".into()],
            pod_label: Some("tier=web".into()),
        })
        .unwrap();
        assert!(t.enabled());
        let web = labels(&[("tier", "web")]);
        assert!(t.selects("shop", "frontend-7d9f-abc", &web));
        assert!(!t.selects("kube-system", "frontend-1", &web));
        assert!(!t.selects("shop", "my-frontend-1", &web), "patterns are anchored");
        assert!(!t.selects("shop", "db-01", &web));
        assert!(!t.selects("shop", "db-0", &labels(&[("tier", "db")])));
        assert!(
            Targets::new(&TargetConfig { pod: vec!["(".into()], ..Default::default() })
                .unwrap_err()
                .contains("target.pod")
        );
    }
}
