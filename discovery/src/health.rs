//! Features that run degraded, and why.
//!
//! A missing capability, a host path that stopped being what it must be,
//! a kernel without a hook: the exporter keeps serving, but some series are
//! then absent or incomplete. Whoever notices it raises a [`Notice`] here;
//! the landing page lists them, `/metrics` exports them as
//! `pmoas_feature_degraded{component,feature} 1`, and the log says it once
//! (again only when the reason changes). Nothing goes missing silently.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One degraded feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Who owns the feature: `discovery`, `cgroup`, `socket`, ...
    pub component: &'static str,
    /// What is missing, as a short label value: `pod_network`, `process_names`, ...
    pub feature: &'static str,
    /// Why, and what to do about it.
    pub reason: String,
}

/// The degraded features now.
#[derive(Debug, Default)]
pub struct Health {
    notices: Mutex<BTreeMap<(&'static str, &'static str), String>>,
}

impl Health {
    /// `feature` of `component` is degraded for `reason`. Logged at WARN the
    /// first time and whenever the reason changes.
    pub fn raise(&self, component: &'static str, feature: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        let mut notices = self.notices.lock().unwrap_or_else(|p| p.into_inner());
        if notices.get(&(component, feature)) != Some(&reason) {
            tracing::warn!(component, feature, "{reason}");
            notices.insert((component, feature), reason);
        }
    }

    /// `feature` of `component` works again.
    pub fn clear(&self, component: &'static str, feature: &'static str) {
        let mut notices = self.notices.lock().unwrap_or_else(|p| p.into_inner());
        if notices.remove(&(component, feature)).is_some() {
            tracing::info!(component, feature, "works again");
        }
    }

    /// Every degraded feature, ordered by component and feature.
    pub fn notices(&self) -> Vec<Notice> {
        let notices = self.notices.lock().unwrap_or_else(|p| p.into_inner());
        notices
            .iter()
            .map(|((component, feature), reason)| Notice { component, feature, reason: reason.clone() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_replace_and_clear() {
        let h = Health::default();
        h.raise("cgroup", "pod_network", "no CAP_SYS_PTRACE");
        h.raise("cgroup", "pod_network", "no CAP_SYS_PTRACE");
        h.raise("discovery", "process_names", "procfs unreadable");
        assert_eq!(h.notices().len(), 2);
        h.raise("cgroup", "pod_network", "another reason");
        assert_eq!(h.notices()[0].reason, "another reason");
        h.clear("cgroup", "pod_network");
        assert_eq!(
            h.notices(),
            vec![Notice { component: "discovery", feature: "process_names", reason: "procfs unreadable".into() }]
        );
    }
}
