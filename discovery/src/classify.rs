//! Which container of a pod is its sidecar, and which mesh it belongs to.
//!
//! `--sidecar.mode`:
//! - `auto` (default): the custom rules, then built-in knowledge, then the
//!   process-name heuristic; every other container of a pod is an app;
//! - `rules`: the custom rules only;
//! - `none`: no sidecars; every container of a pod is an app.
//!
//! Built-in knowledge, in order: Istio (`sidecar.istio.io/status` naming the
//! container, a container named `istio-proxy`, a `proxyv2` image), Linkerd
//! (`linkerd-proxy`), Consul (`consul-dataplane`), Kuma (`kuma-sidecar`,
//! `kuma-dp`), plain Envoy (`envoy`, `envoyproxy/envoy`), any native sidecar
//! (an init container with `restartPolicy: Always`), then processes named
//! `pilot-agent`, `linkerd2-proxy` or `envoy`.
//!
//! A custom rule names a `kind` (the `sidecar_kind` label) and any of
//! `container`, `image`, `process` (regexes), `pod_label`, `pod_annotation`
//! (`key` or `key=regex`); all that it names must match. Rules apply in
//! order; the first that matches wins. On the command line a rule is written
//! `KIND=FIELD:REGEX[,FIELD:REGEX...]`, e.g. `mymesh=container:^mesh-proxy$`.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};

use crate::Role;
use crate::metadata::{ContainerKind, PodMeta};

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SidecarMode {
    #[default]
    Auto,
    Rules,
    None,
}

/// `[sidecar]` of the configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SidecarConfig {
    pub mode: SidecarMode,
    #[serde(deserialize_with = "rules_or_strings")]
    pub rules: Vec<SidecarRule>,
}

/// One custom rule (see the module docs).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SidecarRule {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_annotation: Option<String>,
}

impl SidecarRule {
    /// Parses `KIND=FIELD:REGEX[,FIELD:REGEX...]`.
    pub fn parse(s: &str) -> Result<SidecarRule, String> {
        let (kind, fields) = s
            .split_once('=')
            .ok_or_else(|| format!("sidecar rule `{s}`: expected KIND=FIELD:REGEX[,FIELD:REGEX...]"))?;
        let mut rule = SidecarRule { kind: kind.trim().to_string(), ..Default::default() };
        for part in fields.split(',').filter(|p| !p.trim().is_empty()) {
            let (field, value) =
                part.split_once(':').ok_or_else(|| format!("sidecar rule `{s}`: `{part}` is not FIELD:REGEX"))?;
            let slot = match field.trim() {
                "container" => &mut rule.container,
                "image" => &mut rule.image,
                "process" => &mut rule.process,
                "pod_label" => &mut rule.pod_label,
                "pod_annotation" => &mut rule.pod_annotation,
                other => {
                    return Err(format!(
                        "sidecar rule `{s}`: unknown field `{other}` (container, image, process, pod_label, pod_annotation)"
                    ));
                }
            };
            *slot = Some(value.to_string());
        }
        Ok(rule)
    }
}

fn rules_or_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SidecarRule>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum One {
        Table(SidecarRule),
        Text(String),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Many {
        List(Vec<One>),
        Text(String),
    }
    let items = match Many::deserialize(d)? {
        Many::List(l) => l,
        Many::Text(t) => t.split(';').filter(|s| !s.trim().is_empty()).map(|s| One::Text(s.to_string())).collect(),
    };
    items
        .into_iter()
        .map(|o| match o {
            One::Table(r) => Ok(r),
            One::Text(t) => SidecarRule::parse(&t).map_err(serde::de::Error::custom),
        })
        .collect()
}

/// A `key` or `key=regex` matcher of pod labels or annotations.
#[derive(Debug)]
struct KeyMatch {
    key: String,
    value: Option<Regex>,
}

impl KeyMatch {
    fn parse(s: &str) -> Result<KeyMatch, regex::Error> {
        Ok(match s.split_once('=') {
            Some((k, v)) => KeyMatch { key: k.to_string(), value: Some(Regex::new(v)?) },
            None => KeyMatch { key: s.to_string(), value: None },
        })
    }

    fn matches(&self, map: &std::collections::BTreeMap<String, String>) -> bool {
        map.get(&self.key).is_some_and(|v| self.value.as_ref().is_none_or(|r| r.is_match(v)))
    }
}

#[derive(Debug)]
struct CompiledRule {
    kind: String,
    container: Option<Regex>,
    image: Option<Regex>,
    process: Option<Regex>,
    pod_label: Option<KeyMatch>,
    pod_annotation: Option<KeyMatch>,
}

/// Everything classification can look at, for one container.
pub struct Facts<'a> {
    pub container: Option<&'a str>,
    pub image: Option<&'a str>,
    pub kind: Option<ContainerKind>,
    pub pod: Option<&'a PodMeta>,
    /// The names of the container's processes; `None` when it has none yet.
    /// Called at most once, and only if a rule needs it.
    pub processes: &'a dyn Fn() -> Option<Vec<String>>,
}

/// The verdict for one container of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub role: Role,
    /// The `sidecar_kind` label: istio, linkerd, consul, kuma, envoy,
    /// native, or a custom rule's kind; empty for apps.
    pub kind: String,
    /// False when the verdict may change once the container's processes
    /// start (it was decided without them).
    pub settled: bool,
}

impl Classification {
    fn sidecar(kind: &str) -> Classification {
        Classification { role: Role::Sidecar, kind: kind.to_string(), settled: true }
    }

    fn app(settled: bool) -> Classification {
        Classification { role: Role::App, kind: String::new(), settled }
    }
}

/// Compiled classification rules.
pub struct Classifier {
    mode: SidecarMode,
    rules: Vec<CompiledRule>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier").field("mode", &self.mode).field("rules", &self.rules.len()).finish()
    }
}

/// `(process name, kind)` of the process heuristic, in priority order.
const SIDECAR_PROCESSES: &[(&str, &str)] =
    &[("pilot-agent", "istio"), ("linkerd2-proxy", "linkerd"), ("envoy", "envoy")];

impl Classifier {
    /// Compiles the configuration; an error names the rule and the field.
    pub fn new(config: &SidecarConfig) -> Result<Classifier, String> {
        let mut rules = Vec::new();
        for (i, r) in config.rules.iter().enumerate() {
            let ctx = |field: &str, e: regex::Error| format!("sidecar rule {} ({}): {field}: {e}", i + 1, r.kind);
            if r.kind.is_empty() {
                return Err(format!("sidecar rule {}: `kind` is required", i + 1));
            }
            if r.container.is_none()
                && r.image.is_none()
                && r.process.is_none()
                && r.pod_label.is_none()
                && r.pod_annotation.is_none()
            {
                return Err(format!(
                    "sidecar rule {} ({}): matches nothing; give container, image, process, pod_label or pod_annotation",
                    i + 1,
                    r.kind
                ));
            }
            let re =
                |field: &str, v: &Option<String>| v.as_deref().map(Regex::new).transpose().map_err(|e| ctx(field, e));
            let key = |field: &str, v: &Option<String>| {
                v.as_deref().map(KeyMatch::parse).transpose().map_err(|e| ctx(field, e))
            };
            rules.push(CompiledRule {
                kind: r.kind.clone(),
                container: re("container", &r.container)?,
                image: re("image", &r.image)?,
                process: re("process", &r.process)?,
                pod_label: key("pod_label", &r.pod_label)?,
                pod_annotation: key("pod_annotation", &r.pod_annotation)?,
            });
        }
        Ok(Classifier { mode: config.mode, rules })
    }

    /// Classifies one container of a pod.
    pub fn classify(&self, f: &Facts<'_>) -> Classification {
        if self.mode == SidecarMode::None {
            return Classification::app(true);
        }
        let mut processes: Option<Option<Vec<String>>> = None;
        let mut procs = || processes.get_or_insert_with(|| (f.processes)()).clone();

        for r in &self.rules {
            if rule_matches(r, f, &mut procs) {
                return Classification::sidecar(&r.kind);
            }
        }
        if self.mode == SidecarMode::Rules {
            return Classification::app(true);
        }
        if let Some(kind) = builtin(f) {
            return Classification::sidecar(kind);
        }
        match procs() {
            Some(names) => match SIDECAR_PROCESSES.iter().find(|(p, _)| names.iter().any(|n| n == p)) {
                Some((_, kind)) => Classification::sidecar(kind),
                None => Classification::app(true),
            },
            None => Classification::app(false),
        }
    }
}

fn rule_matches(r: &CompiledRule, f: &Facts<'_>, procs: &mut dyn FnMut() -> Option<Vec<String>>) -> bool {
    let text = |re: &Option<Regex>, v: Option<&str>| re.as_ref().is_none_or(|re| v.is_some_and(|v| re.is_match(v)));
    if !text(&r.container, f.container) || !text(&r.image, f.image) {
        return false;
    }
    if let Some(m) = &r.pod_label
        && !f.pod.is_some_and(|p| m.matches(&p.labels))
    {
        return false;
    }
    if let Some(m) = &r.pod_annotation
        && !f.pod.is_some_and(|p| m.matches(&p.annotations))
    {
        return false;
    }
    if let Some(re) = &r.process {
        return procs().is_some_and(|names| names.iter().any(|n| re.is_match(n)));
    }
    true
}

/// Known meshes, by the container's name, image, and pod annotations.
fn builtin(f: &Facts<'_>) -> Option<&'static str> {
    let name = f.container.unwrap_or("");
    let image = f.image.unwrap_or("");
    if let (Some(pod), Some(c)) = (f.pod, f.container)
        && istio_injected(pod).iter().any(|n| n == c)
    {
        return Some("istio");
    }
    let image_has = |s: &str| image.contains(s);
    if name == "istio-proxy" || image_has("/proxyv2:") || image_has("/proxyv2@") || image.ends_with("/proxyv2") {
        return Some("istio");
    }
    if name == "linkerd-proxy" || image_has("linkerd/proxy") {
        return Some("linkerd");
    }
    if name == "consul-dataplane" || image_has("consul-dataplane") {
        return Some("consul");
    }
    if name == "kuma-sidecar" || image_has("kuma-dp") {
        return Some("kuma");
    }
    if name == "envoy" || image_has("envoyproxy/envoy") {
        return Some("envoy");
    }
    if f.kind == Some(ContainerKind::NativeSidecar) {
        return Some("native");
    }
    None
}

/// The containers Istio's injector says it added
/// (`sidecar.istio.io/status: {"containers":["istio-proxy"],...}`).
fn istio_injected(pod: &PodMeta) -> Vec<String> {
    pod.annotations
        .get("sidecar.istio.io/status")
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v.get("containers").cloned())
        .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(annotations: &[(&str, &str)], labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: "u".into(),
            namespace: "ns".into(),
            name: "p".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            containers: vec![],
        }
    }

    fn classify(
        c: &Classifier,
        name: &str,
        image: &str,
        kind: ContainerKind,
        pod: Option<&PodMeta>,
        procs: Option<&[&str]>,
    ) -> (Role, String, bool) {
        let p: Option<Vec<String>> = procs.map(|p| p.iter().map(|s| s.to_string()).collect());
        let f =
            Facts { container: Some(name), image: Some(image), kind: Some(kind), pod, processes: &move || p.clone() };
        let r = c.classify(&f);
        (r.role, r.kind, r.settled)
    }

    fn auto() -> Classifier {
        Classifier::new(&SidecarConfig::default()).unwrap()
    }

    #[test]
    fn well_known_meshes() {
        let c = auto();
        let reg = ContainerKind::Regular;
        assert_eq!(classify(&c, "istio-proxy", "docker.io/istio/proxyv2:1.24.0", reg, None, None).1, "istio");
        assert_eq!(classify(&c, "sidecar", "gcr.io/istio-release/proxyv2:1.20", reg, None, None).1, "istio");
        assert_eq!(classify(&c, "linkerd-proxy", "cr.l5d.io/linkerd/proxy:edge", reg, None, None).1, "linkerd");
        assert_eq!(classify(&c, "consul-dataplane", "hashicorp/consul-dataplane:1.4", reg, None, None).1, "consul");
        assert_eq!(classify(&c, "kuma-sidecar", "kumahq/kuma-dp:2.9", reg, None, None).1, "kuma");
        assert_eq!(classify(&c, "proxy", "envoyproxy/envoy:v1.31", reg, None, None).1, "envoy");
        assert_eq!(
            classify(&c, "log-shipper", "fluent-bit", ContainerKind::NativeSidecar, None, Some(&[])).1,
            "native"
        );
        let (role, kind, settled) = classify(&c, "web", "nginx:1.27", reg, None, Some(&["nginx"]));
        assert_eq!((role, kind.as_str(), settled), (Role::App, "", true));
    }

    #[test]
    fn istio_status_annotation_names_the_sidecar() {
        let p = pod(
            &[("sidecar.istio.io/status", r#"{"initContainers":["istio-init"],"containers":["mesh"],"volumes":[]}"#)],
            &[],
        );
        assert_eq!(
            classify(&auto(), "mesh", "internal/registry/proxy:7", ContainerKind::Regular, Some(&p), None).1,
            "istio"
        );
        assert_eq!(
            classify(&auto(), "app", "internal/app", ContainerKind::Regular, Some(&p), Some(&["app"])).0,
            Role::App
        );
    }

    #[test]
    fn process_heuristic_and_unsettled_verdicts() {
        let c = auto();
        let reg = ContainerKind::Regular;
        assert_eq!(classify(&c, "c", "img", reg, None, Some(&["pilot-agent", "envoy"])).1, "istio");
        assert_eq!(classify(&c, "c", "img", reg, None, Some(&["linkerd2-proxy"])).1, "linkerd");
        assert_eq!(classify(&c, "c", "img", reg, None, Some(&["envoy"])).1, "envoy");
        // No processes yet: app for now, to be looked at again.
        assert_eq!(classify(&c, "c", "img", reg, None, None), (Role::App, String::new(), false));
    }

    #[test]
    fn custom_rules_first_match_wins_and_modes() {
        let cfg = SidecarConfig {
            mode: SidecarMode::Auto,
            rules: vec![
                SidecarRule::parse("mesh-a=container:^proxy$,pod_label:mesh=a").unwrap(),
                SidecarRule::parse("mesh-b=container:^proxy$").unwrap(),
                SidecarRule::parse("sniffer=process:^tcpdump$").unwrap(),
                SidecarRule {
                    kind: "annotated".into(),
                    pod_annotation: Some("example.com/sidecar".into()),
                    image: Some("agent".into()),
                    ..Default::default()
                },
            ],
        };
        let c = Classifier::new(&cfg).unwrap();
        let reg = ContainerKind::Regular;
        let a = pod(&[], &[("mesh", "a")]);
        let b = pod(&[("example.com/sidecar", "yes")], &[("mesh", "b")]);
        assert_eq!(classify(&c, "proxy", "x", reg, Some(&a), None).1, "mesh-a");
        assert_eq!(classify(&c, "proxy", "x", reg, Some(&b), None).1, "mesh-b");
        assert_eq!(classify(&c, "debug", "x", reg, Some(&b), Some(&["tcpdump"])).1, "sniffer");
        assert_eq!(classify(&c, "x", "corp/agent:1", reg, Some(&b), Some(&[])).1, "annotated");
        // A custom rule beats built-in knowledge.
        let c2 = Classifier::new(&SidecarConfig {
            mode: SidecarMode::Auto,
            rules: vec![SidecarRule::parse("corp=container:istio-proxy").unwrap()],
        })
        .unwrap();
        assert_eq!(classify(&c2, "istio-proxy", "proxyv2", reg, None, None).1, "corp");

        // rules: only the custom ones.
        let rules_only = Classifier::new(&SidecarConfig { mode: SidecarMode::Rules, ..cfg.clone() }).unwrap();
        assert_eq!(classify(&rules_only, "istio-proxy", "istio/proxyv2:1", reg, None, Some(&["envoy"])).0, Role::App);
        assert_eq!(classify(&rules_only, "proxy", "x", reg, Some(&a), None).1, "mesh-a");
        // none: nobody is a sidecar.
        let none = Classifier::new(&SidecarConfig { mode: SidecarMode::None, ..cfg }).unwrap();
        assert_eq!(
            classify(&none, "istio-proxy", "istio/proxyv2:1", reg, None, Some(&["envoy"])),
            (Role::App, String::new(), true)
        );
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        assert!(SidecarRule::parse("no-equals").unwrap_err().contains("KIND=FIELD:REGEX"));
        assert!(SidecarRule::parse("k=colour:red").unwrap_err().contains("unknown field `colour`"));
        let bad_regex =
            SidecarConfig { mode: SidecarMode::Auto, rules: vec![SidecarRule::parse("k=image:(").unwrap()] };
        let e = Classifier::new(&bad_regex).unwrap_err();
        assert!(e.contains("sidecar rule 1 (k): image"), "{e}");
        let empty = SidecarConfig {
            mode: SidecarMode::Auto,
            rules: vec![SidecarRule { kind: "k".into(), ..Default::default() }],
        };
        assert!(Classifier::new(&empty).unwrap_err().contains("matches nothing"));
    }

    #[test]
    fn rules_from_text_and_tables() {
        #[derive(Deserialize)]
        struct W {
            s: SidecarConfig,
        }
        let w: W = toml::from_str("[s]\nrules = \"a=container:x;b=image:y\"\n").unwrap();
        assert_eq!(w.s.rules.len(), 2);
        let w: W = toml::from_str("[s]\nmode = \"rules\"\n[[s.rules]]\nkind = \"a\"\ncontainer = \"x\"\n").unwrap();
        assert_eq!((w.s.mode, w.s.rules[0].container.as_deref()), (SidecarMode::Rules, Some("x")));
    }
}
