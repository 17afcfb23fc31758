//! `docker compose up`, for real: the stack of docker-compose.yml (the
//! exporter built by the Dockerfile, Prometheus with prometheus/, the
//! Pushgateway, Grafana's provisioning, an OTLP receiver in Jaeger's place)
//! brought up by Debian's `docker-compose` through Podman's Docker-compatible
//! API (`podman system service`), on a machine that reaches no container
//! registry: scripts/compose-images.sh builds the base images from Debian
//! packages under the names the files use, and compose.test.yml swaps
//! Grafana and Jaeger, which no reachable registry ships, for stand-ins
//! (docs/compose.md). Then, with testbed traffic: Prometheus has the
//! exporter's target up and answers PromQL about the testbed pod, the push
//! reached the Pushgateway, spans reached the receiver, the exporter in its
//! container runs every collector with nothing degraded and names the
//! stack's own containers through the engine socket, and Grafana's files are
//! where Grafana reads them. Also without root: `docker-compose config` of
//! both files, hadolint on the Dockerfile, and the ports and image names the
//! files share agree.
//!
//! Podman runs from its own configuration in `target/pmoas-compose` (like
//! the testbed's in target/pmoas-podman, but with overlay storage: the Rust
//! builder image is 1 GB, and vfs would copy it whole for every layer).
//! Images and the build caches stay there between runs; the containers, the
//! Prometheus volume, Podman's cgroups of the containers and the API service
//! go at the end. The exporter is built with the dev profile (a cold release
//! build takes ~6 min on 2 cores, dev ~3); PMOAS_COMPOSE_BUILD_PROFILE=release
//! builds what `docker compose up` builds.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pmoas_testbed::{Place, Pod, PodOptions};

const DOCKER_COMPOSE: &str = "/usr/bin/docker-compose";
const PROJECT: &str = "pmoas-compose-test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn venv_bin(name: &str) -> PathBuf {
    repo().join("target/pmoas-venv/bin").join(name)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every variable docker-compose.yml and compose.test.yml read, so that the
/// caller's environment cannot change what the test checks.
const COMPOSE_VARIABLES: &[&str] = &[
    "RUST_IMAGE",
    "RUNTIME_IMAGE",
    "PMOAS_BUILD_PROFILE",
    "PMOAS_REVISION",
    "PMOAS_IMAGE",
    "PMOAS_PORT",
    "PMOAS_ENGINE_SOCKET",
    "JAEGER_OTLP_GRPC_PORT",
    "JAEGER_OTLP_HTTP_PORT",
    "JAEGER_UI_PORT",
    "PUSHGATEWAY_PORT",
    "PROMETHEUS_IMAGE",
    "PROMETHEUS_PORT",
    "PMOAS_PROMETHEUS_CONFIG",
    "PUSHGATEWAY_IMAGE",
    "GRAFANA_IMAGE",
    "GRAFANA_PORT",
    "JAEGER_IMAGE",
    "STANDIN_IMAGE",
    "PMOAS_TEST_SPANS_DIR",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "DOCKER_HOST",
];

/// `docker-compose -f docker-compose.yml [-f compose.test.yml]` in the
/// checkout, with only `vars` of the compose variables set.
fn docker_compose(with_test_file: bool, vars: &[(&str, String)]) -> Command {
    let mut c = Command::new(DOCKER_COMPOSE);
    c.current_dir(repo()).args(["-f", "docker-compose.yml"]);
    if with_test_file {
        c.args(["-f", "compose.test.yml"]);
    }
    for v in COMPOSE_VARIABLES {
        c.env_remove(v);
    }
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

fn output(mut c: Command) -> (bool, String) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The port of `:PORT`, `host:PORT` or `scheme://host:PORT[/...]`.
fn port_of(addr: &str) -> u16 {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap();
    hostport.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// The value of `--flag=VALUE` in a service's command.
fn flag<'a>(service: &'a serde_yaml::Value, flag: &str) -> &'a str {
    service["command"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .find_map(|a| a.strip_prefix(flag).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {flag}= in {:?}", service["command"]))
}

/// `VAR=${VAR:-DEFAULT}` in scripts/compose-images.sh: DEFAULT.
fn script_default(script: &str, var: &str) -> String {
    let prefix = format!("{var}=${{{var}:-");
    let line = script.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix} in the script"));
    line[prefix.len()..].trim_end_matches('}').to_string()
}

/// `docker-compose config` of the file as shipped and with the test's
/// override; hadolint on the Dockerfile; and what the files must agree on
/// with host networking (every port is the host's) and across the image
/// names (the Dockerfile's, docker-compose.yml's and the image script's
/// defaults are the same names).
#[test]
fn compose_config_is_valid_and_the_dockerfile_lints() {
    let test = "compose_config_is_valid_and_the_dockerfile_lints";
    let mut problems = Vec::new();
    if !Path::new(DOCKER_COMPOSE).exists() {
        problems.push(format!("{DOCKER_COMPOSE} (apt-get install docker-compose)"));
    }
    if !venv_bin("hadolint").exists() {
        problems.push("target/pmoas-venv/bin/hadolint (scripts/install-deps.sh test)".into());
    }
    if !can_run(test, &problems) {
        return;
    }

    let mut c = docker_compose(false, &[]);
    c.arg("config");
    let (ok, shipped) = output(c);
    assert!(ok, "docker-compose config of docker-compose.yml:\n{shipped}");
    let mut c = docker_compose(true, &[("PMOAS_TEST_SPANS_DIR", "/tmp".into())]);
    c.args(["config", "-q"]);
    let (ok, text) = output(c);
    assert!(ok, "docker-compose config with compose.test.yml:\n{text}");
    // The override needs its spans directory: said by name, not guessed.
    let mut c = docker_compose(true, &[]);
    c.args(["config", "-q"]);
    let (ok, text) = output(c);
    assert!(!ok && text.contains("spans"), "compose.test.yml without PMOAS_TEST_SPANS_DIR: {text}");

    let mut c = Command::new(venv_bin("hadolint"));
    c.current_dir(repo()).args(["--config", ".hadolint.yaml", "Dockerfile"]);
    let (ok, text) = output(c);
    assert!(ok, "hadolint Dockerfile:\n{text}");

    // What the files share, as docker-compose resolved it with no variable set.
    let config: serde_yaml::Value = serde_yaml::from_str(&shipped).expect("docker-compose config is YAML");
    let services = &config["services"];
    let names: Vec<&str> = services.as_mapping().unwrap().keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(names, ["exporter", "grafana", "jaeger", "prometheus", "pushgateway"]);
    for (name, s) in services.as_mapping().unwrap() {
        assert_eq!(s["network_mode"].as_str(), Some("host"), "{name:?} is not on the host's network");
    }
    let exporter = &services["exporter"];
    let env = |k: &str| exporter["environment"][k].as_str().unwrap_or_else(|| panic!("exporter: no {k}")).to_string();
    let pmoas_port = port_of(&env("PMOAS_WEB_LISTEN_ADDRESS"));
    assert_eq!(pmoas_port, 8765);
    assert_eq!(
        port_of(&env("PMOAS_OTLP_ENDPOINT")),
        port_of(flag(&services["jaeger"], "--collector.otlp.grpc.host-port"))
    );
    assert_eq!(
        port_of(&env("PMOAS_PUSH_GATEWAY_URL")),
        port_of(flag(&services["pushgateway"], "--web.listen-address"))
    );
    assert_eq!(exporter["pid"].as_str(), Some("host"));
    assert!(exporter["privileged"].is_null(), "the exporter gets capabilities, not privileged");
    assert_eq!(exporter["cap_drop"][0].as_str(), Some("ALL"));

    // Prometheus scrapes that port; Grafana's datasource is that Prometheus.
    let prometheus_port = port_of(flag(&services["prometheus"], "--web.listen-address"));
    let prom: serde_yaml::Value = serde_yaml::from_str(&read("prometheus/prometheus.yml")).unwrap();
    let target = prom["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str().unwrap();
    assert_eq!(target, format!("localhost:{pmoas_port}"), "prometheus/prometheus.yml's target");
    let ds: serde_yaml::Value = serde_yaml::from_str(&read("grafana/provisioning/datasources/prometheus.yml")).unwrap();
    let url = ds["datasources"][0]["url"].as_str().unwrap();
    assert_eq!(url, format!("http://localhost:{prometheus_port}"), "Grafana's datasource");
    assert_eq!(services["grafana"]["environment"]["GF_SERVER_HTTP_PORT"].as_str(), Some("3000"));

    // One name per image, wherever it is written.
    let dockerfile = read("Dockerfile");
    let script = read("scripts/compose-images.sh");
    let arg = |name: &str| -> String {
        let prefix = format!("ARG {name}=");
        dockerfile
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("Dockerfile: no {prefix}"))
            .into()
    };
    for name in ["RUST_IMAGE", "RUNTIME_IMAGE"] {
        assert_eq!(exporter["build"]["args"][name].as_str(), Some(arg(name).as_str()), "build arg {name}");
        assert_eq!(script_default(&script, name), arg(name), "scripts/compose-images.sh's {name}");
    }
    for (service, var) in [("prometheus", "PROMETHEUS_IMAGE"), ("pushgateway", "PUSHGATEWAY_IMAGE")] {
        assert_eq!(services[service]["image"].as_str(), Some(script_default(&script, var).as_str()), "{var}");
    }
    let test_file = read("compose.test.yml");
    assert!(
        test_file.contains(&format!("${{STANDIN_IMAGE:-{}}}", script_default(&script, "STANDIN_IMAGE"))),
        "compose.test.yml's stand-in image is the script's"
    );
}

/// Podman with a private configuration in target/pmoas-compose.
struct Engine {
    dir: PathBuf,
    /// Was the overlay driver's own mount of its storage there before?
    overlay_mounted_before: bool,
}

/// Is `path` a mount point now (in /proc/self/mountinfo)?
fn is_mount_point(path: &Path) -> bool {
    let want = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(want.as_str()))
}

/// Podman's overlay driver mounts its storage directory on itself; the
/// mount outlives the test and keeps the checkout from being deleted.
/// Unmounted at the end if this test made it.
impl Drop for Engine {
    fn drop(&mut self) {
        let overlay = self.dir.join("storage/overlay");
        if !self.overlay_mounted_before && is_mount_point(&overlay) {
            let _ = Command::new("umount").arg(&overlay).status();
        }
    }
}

impl Engine {
    fn setup() -> Engine {
        let dir = repo().join("target/pmoas-compose");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let dir = dir.canonicalize().unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=16384:16384\", \"nproc=8192:8192\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{}\"\n",
                dir.join("events.log").display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("storage").display(),
                dir.join("run").display()
            ),
        )
        .unwrap();
        let overlay_mounted_before = is_mount_point(&dir.join("storage/overlay"));
        Engine { dir, overlay_mounted_before }
    }

    /// `cmd` with this Podman configuration; TMPDIR holds Buildah's
    /// `RUN --mount=type=cache` directories (the crate registry, target/).
    fn env(&self, cmd: &mut Command) {
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("TMPDIR", self.dir.join("tmp"));
    }

    /// `podman system service` on a socket of its own, until dropped.
    fn serve(&self) -> Service {
        let socket = self.dir.join("podman.sock");
        let _ = std::fs::remove_file(&socket);
        let mut c = Command::new("podman");
        self.env(&mut c);
        let child = c
            .args(["system", "service", "--time=0", &format!("unix://{}", socket.display())])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("service.log")).unwrap())
            .spawn()
            .expect("starting podman system service");
        let service = Service { child, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !service.socket.exists() {
            assert!(Instant::now() < deadline, "podman system service made no socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }
}

/// The API service; stopped by PID when dropped.
struct Service {
    child: Child,
    socket: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The compose project; `down -v` and Podman's leftover cgroups removed
/// when dropped.
struct Stack {
    vars: Vec<(&'static str, String)>,
    dir: PathBuf,
    /// `libpod_parent` and `libpod_parent/conmon` cgroups that did not exist
    /// before the stack: Podman (cgroupfs manager) leaves them behind.
    new_cgroups: Vec<PathBuf>,
    down: bool,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Command {
        let mut c = docker_compose(true, &self.vars);
        c.args(["-p", PROJECT]).args(args);
        c
    }

    /// Runs `docker-compose ARGS`, its output in `<dir>/<log>.log`; the
    /// time it took.
    fn run(&self, log: &str, args: &[&str]) -> Duration {
        let started = Instant::now();
        let file = self.dir.join(format!("{log}.log"));
        let status = self
            .compose(args)
            .stdout(std::fs::File::create(&file).unwrap())
            .stderr(std::fs::File::options().append(true).open(&file).unwrap())
            .status()
            .expect("running docker-compose");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        assert!(status.success(), "docker-compose {}:\n{}\n{}", args.join(" "), tail.join("\n"), self.logs());
        started.elapsed()
    }

    fn logs(&self) -> String {
        let out = self.compose(&["logs", "--no-color", "--tail", "40"]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    fn container_ids(&self) -> Vec<String> {
        let out = self.compose(&["ps", "-q"]).output().map(|o| o.stdout).unwrap_or_default();
        String::from_utf8_lossy(&out).split_whitespace().filter(|id| id.len() == 64).map(str::to_string).collect()
    }

    fn down(&mut self) -> Duration {
        self.down = true;
        let started = Instant::now();
        let ids = self.container_ids();
        let _ = self.compose(&["down", "-v", "--timeout", "5"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        // Children first; rmdir(2) removes only empty cgroups, and only
        // Podman's names for this stack's containers or new parents.
        let mut dirs = Vec::new();
        for mount in pmoas_testbed::podman::cgroup_mounts() {
            for id in &ids {
                dirs.push(mount.join("libpod_parent").join(format!("libpod-{id}")));
            }
        }
        dirs.extend(self.new_cgroups.iter().cloned());
        for dir in dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            while dir.exists() && std::fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        started.elapsed()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.down {
            self.down();
        }
    }
}

/// tracefs at /sys/kernel/tracing, mounted for the test if the host has
/// none (the stack needs the host's: docker-compose.yml), and unmounted
/// again then.
struct Tracefs {
    mounted_here: bool,
}

impl Tracefs {
    fn ensure() -> Tracefs {
        let mounted = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split(' ').nth(4) == Some("/sys/kernel/tracing") && l.contains(" - tracefs "))
        };
        if mounted() {
            return Tracefs { mounted_here: false };
        }
        let ok = Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]).status();
        assert!(ok.is_ok_and(|s| s.success()) && mounted(), "could not mount tracefs at /sys/kernel/tracing");
        Tracefs { mounted_here: true }
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
        }
    }
}

/// What the stack test needs beyond the testbed.
fn stack_problems() -> Vec<String> {
    let mut problems = testbed_problems();
    for (path, how) in [
        ("/usr/bin/podman", "apt-get install podman"),
        ("/usr/sbin/runc", "apt-get install runc"),
        (DOCKER_COMPOSE, "apt-get install docker-compose"),
        ("/usr/sbin/debootstrap", "apt-get install debootstrap"),
        ("/usr/bin/prometheus", "apt-get install prometheus"),
        ("/usr/bin/prometheus-pushgateway", "apt-get install prometheus-pushgateway"),
        ("/sys/kernel/btf/vmlinux", "a kernel with BTF"),
    ] {
        if !Path::new(path).exists() {
            problems.push(format!("{path} ({how})"));
        }
    }
    if let Err(why) = pmoas_testbed::otlp_receiver::python() {
        problems.push(why);
    }
    if !Command::new("rustc").arg("--version").output().is_ok_and(|o| o.status.success()) {
        problems.push("rustc on PATH (the builder image takes the host's toolchain)".into());
    }
    for dir in ["grafana/provisioning", "grafana/dashboards"] {
        if !repo().join(dir).is_dir() {
            problems.push(format!("{dir} (docker-compose.yml mounts it)"));
        }
    }
    problems
}

fn get(port: u16, path: &str) -> (u16, String) {
    http_get(([127, 0, 0, 1], port).into(), path, &[]).unwrap_or_default()
}

/// Prometheus's HTTP API: the `result` of an instant query.
fn query(port: u16, promql: &str) -> Vec<serde_json::Value> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = get(port, &format!("/api/v1/query?query={q}"));
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn value(r: &serde_json::Value) -> f64 {
    r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// Polls `f` every 500 ms until it gives Some, or `within` passed.
fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_compose_stack_comes_up_with_podman() {
    let test = "the_compose_stack_comes_up_with_podman";
    if !can_run(test, &stack_problems()) {
        return;
    }
    let started = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let engine = Engine::setup();
    let dir = std::env::temp_dir().join(format!("pmoas-compose-test-{}", std::process::id()));
    let spans_dir = dir.join("spans");
    std::fs::create_dir_all(&spans_dir).unwrap();

    // The base images and the stand-in, built once and kept.
    let t = Instant::now();
    let mut c = Command::new(repo().join("scripts/compose-images.sh"));
    engine.env(&mut c);
    c.arg("--test");
    let (ok, text) = output(c);
    assert!(ok, "scripts/compose-images.sh --test:\n{text}");
    eprint!("{text}");
    timings.push(("base images", t.elapsed()));

    let service = engine.serve();
    let _tracefs = Tracefs::ensure();

    // Free ports for every service (they all use the host's network).
    let port = |_| free_port();
    let [pmoas, prometheus, pushgateway, grafana, otlp_grpc, otlp_http, jaeger_ui]: [u16; 7] =
        std::array::from_fn(port);
    // prometheus/prometheus.yml as shipped, with the test's exporter port,
    // scraping and evaluating every second.
    let shipped = read("prometheus/prometheus.yml");
    let rendered = shipped
        .replace("localhost:8765", &format!("localhost:{pmoas}"))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 30s", "evaluation_interval: 1s");
    assert!(rendered.contains(&format!("localhost:{pmoas}")) && !rendered.contains("15s"), "{shipped}");
    std::fs::write(dir.join("prometheus.yml"), &rendered).unwrap();
    let revision = Command::new("git")
        .current_dir(repo())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let profile = std::env::var("PMOAS_COMPOSE_BUILD_PROFILE").unwrap_or_else(|_| "dev".into());
    let vars = vec![
        ("DOCKER_HOST", format!("unix://{}", service.socket.display())),
        ("PMOAS_ENGINE_SOCKET", service.socket.display().to_string()),
        ("PMOAS_BUILD_PROFILE", profile.clone()),
        ("PMOAS_REVISION", revision.clone()),
        ("PMOAS_PORT", pmoas.to_string()),
        ("PROMETHEUS_PORT", prometheus.to_string()),
        ("PUSHGATEWAY_PORT", pushgateway.to_string()),
        ("GRAFANA_PORT", grafana.to_string()),
        ("JAEGER_OTLP_GRPC_PORT", otlp_grpc.to_string()),
        ("JAEGER_OTLP_HTTP_PORT", otlp_http.to_string()),
        ("JAEGER_UI_PORT", jaeger_ui.to_string()),
        ("PMOAS_PROMETHEUS_CONFIG", dir.join("prometheus.yml").display().to_string()),
        ("PMOAS_TEST_SPANS_DIR", spans_dir.display().to_string()),
    ];
    let mut stack = Stack { vars, dir: dir.clone(), new_cgroups: Vec::new(), down: true };
    // A stack an earlier run left (it was killed): gone first.
    stack.down();
    stack.new_cgroups = pmoas_testbed::podman::cgroup_mounts()
        .into_iter()
        .flat_map(|m| [m.join("libpod_parent/conmon"), m.join("libpod_parent")])
        .filter(|p| !p.exists())
        .collect();
    stack.down = false;

    // COMPOSE_DOCKER_CLI_BUILD=0: through the API (Podman's Buildah), not a docker CLI.
    stack.vars.push(("COMPOSE_DOCKER_CLI_BUILD", "0".into()));
    stack.vars.push(("COMPOSE_HTTP_TIMEOUT", "900".into()));
    let build = stack.run("build", &["build", "exporter"]);
    timings.push(("exporter image build", build));
    // What earlier builds left (their build stage, the image this one
    // replaced) goes; this build's stage stays, as the next one's cache.
    let mut prune = Command::new("podman");
    engine.env(&mut prune);
    prune.args(["image", "prune", "-f", "--filter", &format!("until={}s", build.as_secs() + 10)]);
    let (ok, text) = output(prune);
    assert!(ok, "podman image prune: {text}");
    timings.push(("up -d", stack.run("up", &["up", "-d", "--no-build"])));

    let t = Instant::now();
    let exporter_ready = wait_for(Duration::from_secs(60), || (get(pmoas, "/readyz").0 == 200).then_some(()));
    assert!(exporter_ready.is_some(), "the exporter never got ready on :{pmoas}\n{}", stack.logs());
    timings.push(("exporter ready", t.elapsed()));
    let t = Instant::now();

    // The exporter in its container: every collector running, nothing
    // degraded (capabilities, seccomp, mounts), the build's revision.
    let m = Metrics::parse(&get(pmoas, "/metrics").1);
    for collector in ["socket", "cgroup", "netstack"] {
        assert_eq!(
            m.get("pmoas_scrape_collector_success", &[("collector", collector)]),
            Some(1.0),
            "collector {collector} in the container:\n{}\n{}",
            get(pmoas, "/").1,
            stack.logs()
        );
    }
    let degraded: Vec<String> = m
        .series
        .iter()
        .filter(|(n, _, v)| n == "pmoas_feature_degraded" && *v != 0.0)
        .map(|(_, l, _)| format!("{l:?}"))
        .collect();
    assert!(degraded.is_empty(), "degraded in the container: {degraded:?}\n{}", get(pmoas, "/").1);
    assert_eq!(m.get("pmoas_build_info", &[("revision", revision.as_str())]), Some(1.0), "the build's revision");

    // Testbed traffic through the pod's sidecar.
    let pod = Pod::up(&PodOptions::default()).expect("testbed up");
    let envoy = pod.envoy_addr().to_string();
    let report = tool(&pod, Place::Client, &["http", "--connect", &envoy, "--count", "20"]);
    assert_eq!(report["connected"], 20);

    // Prometheus: the exporter's target up, and PromQL about the pod.
    let up = wait_for(Duration::from_secs(60), || {
        let r = query(prometheus, "up{job=\"pmoas\"}");
        (r.len() == 1 && value(&r[0]) == 1.0).then(|| r[0].clone())
    });
    assert!(
        up.is_some(),
        "Prometheus never had the exporter up: {:?}\n{}",
        get(prometheus, "/api/v1/targets").1,
        stack.logs()
    );
    assert_eq!(up.unwrap()["metric"]["instance"], format!("localhost:{pmoas}"));
    let uid = pod.state.uid.clone();
    let promql = format!("pmoas_tcp_accepts_total{{job=\"pmoas\",pod=\"{uid}\",role=\"sidecar\",peer=\"node\"}}");
    let found = wait_for(Duration::from_secs(60), || {
        let r = query(prometheus, &promql);
        (r.len() == 1 && value(&r[0]) >= 20.0).then(|| r[0].clone())
    });
    let found = found.unwrap_or_else(|| {
        panic!("Prometheus never answered {promql} with 20 accepts: {:?}", query(prometheus, &promql))
    });
    assert_eq!(found["metric"]["container"], &pod.state.sidecar_id[..12]);
    // prometheus/rules/ came along (mounted beside the configuration).
    let (_, rules) = get(prometheus, "/api/v1/rules");
    let rules: serde_json::Value = serde_json::from_str(&rules).unwrap_or_default();
    let loaded: usize = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(loaded >= 10, "Prometheus loaded {loaded} rules of prometheus/rules/");

    // The engine socket: the stack's own containers named as Compose's
    // (pod = project, container = service).
    let named = wait_for(Duration::from_secs(30), || {
        let m = Metrics::parse(&get(pmoas, "/metrics").1);
        (m.sum("pmoas_container_info", &[("pod", PROJECT), ("container", "prometheus")]) > 0.0).then_some(())
    });
    assert!(
        named.is_some(),
        "the exporter did not name the stack's containers through the engine socket:\n{}",
        Metrics::parse(&get(pmoas, "/metrics").1).describe("pmoas_container_info", &[])
    );

    // The Pushgateway has the exporter's group.
    let pushed = wait_for(Duration::from_secs(30), || {
        let (_, page) = get(pushgateway, "/metrics");
        page.lines().any(|l| l.starts_with("pmoas_build_info{") && l.contains("job=\"pmoas\"")).then_some(())
    });
    assert!(pushed.is_some(), "no push reached the Pushgateway:\n{}", stack.logs());

    // Spans at Jaeger's stand-in.
    let spans_file = spans_dir.join("spans.jsonl");
    let spans = wait_for(Duration::from_secs(60), || {
        let _ = tool(&pod, Place::Client, &["http", "--connect", &envoy, "--count", "50"]);
        let text = std::fs::read_to_string(&spans_file).unwrap_or_default();
        let spans: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (spans.len() >= 10).then_some(spans)
    });
    let spans =
        spans.unwrap_or_else(|| panic!("no spans reached the OTLP receiver in Jaeger's place:\n{}", stack.logs()));
    assert!(
        spans.iter().all(|s| s["trace_id"].as_str().is_some_and(|t| t.len() == 32) && s["transport"] == "grpc"),
        "{:?}",
        &spans[..3]
    );
    let stages: BTreeMap<&str, usize> = spans.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s["name"].as_str().unwrap_or("")).or_default() += 1;
        m
    });
    eprintln!("{} spans at the receiver: {stages:?}", spans.len());

    // Grafana's files where Grafana reads them.
    for rel in ["provisioning/datasources/prometheus.yml", "provisioning/dashboards/pmoas.yml"] {
        let (status, body) = get(grafana, &format!("/etc/grafana/{rel}"));
        assert_eq!((status, body), (200, read(&format!("grafana/{rel}"))), "/etc/grafana/{rel} in Grafana's container");
    }
    let (_, listing) = get(grafana, "/var/lib/grafana/dashboards/");
    let dashboards: Vec<String> = std::fs::read_dir(repo().join("grafana/dashboards"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert!(!dashboards.is_empty());
    for d in &dashboards {
        assert!(listing.contains(&format!("href=\"{d}\"")), "{d} not in Grafana's dashboards directory:\n{listing}");
    }
    timings.push(("checks", t.elapsed()));

    drop(pod);
    timings.push(("down", stack.down()));
    drop(service);
    let _ = std::fs::remove_dir_all(&dir);
    let total = started.elapsed();
    let summary: Vec<String> = timings.iter().map(|(what, d)| format!("{what} {:.0} s", d.as_secs_f64())).collect();
    eprintln!("compose stack ({profile} build): {}; total {:.0} s", summary.join(", "), total.as_secs_f64());
}
