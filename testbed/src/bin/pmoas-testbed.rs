//! `pmoas-testbed`: build a sidecar pod for a demo, tear it down, and the
//! traffic tools tests run inside containers.

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use pmoas_testbed::{Pod, PodOptions, list_states, load, teardown, traffic};

const USAGE: &str = "\
pmoas-testbed: a pod with a real sidecar (Envoy -> nginx) on this machine, as root.

Usage:
  pmoas-testbed up                 build a pod and leave it running; prints how to use it
  pmoas-testbed status             list the testbed pods of this machine
  pmoas-testbed down NAME|--all    stop a pod (or all) and remove every trace of it

Traffic tools (tests run them inside containers; they print a JSON report):
  pmoas-testbed tcp-server --listen ADDR --count N [--send BYTES] [--reset]
      accept N connections: read to EOF, answer BYTES (or reset), close.
      Prints `listening ADDR` on stderr once ready.
  pmoas-testbed tcp-client --connect ADDR --count N [--send BYTES]
      N connections: send BYTES, shut down writing, read to EOF.
  pmoas-testbed http --connect ADDR [--path /] --count N [--concurrency C]
      N GET requests with Connection: close.

Resource tools (known load for the cgroup collector's tests):
  pmoas-testbed burn --cpu-ms N          spin until this process used N ms of CPU
  pmoas-testbed hog --mib N              touch N MiB of memory, print `touched`, hold it
                                         until stdin closes (or an hour)
  pmoas-testbed disk --file PATH --write-mib N [--direct]
      write N MiB (O_DIRECT, or buffered + fsync) and report the bytes
  pmoas-testbed disk --file PATH --read [--direct]
      read the file whole (O_DIRECT, or buffered after dropping its cache)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmoas-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--key value` / `--flag` arguments after the subcommand.
struct Opts<'a>(&'a [String]);

impl Opts<'_> {
    fn value(&self, key: &str) -> Option<&str> {
        self.0.iter().position(|a| a == key).and_then(|i| self.0.get(i + 1)).map(String::as_str)
    }
    fn flag(&self, key: &str) -> bool {
        self.0.iter().any(|a| a == key)
    }
    fn num(&self, key: &str, default: u64) -> Result<u64> {
        self.value(key).map_or(Ok(default), |v| v.parse().with_context(|| format!("{key} {v}: not a number")))
    }
    fn addr(&self, key: &str) -> Result<SocketAddr> {
        let v = self.value(key).with_context(|| format!("{key} ADDR is required"))?;
        v.parse().with_context(|| format!("{key} {v}: not an address"))
    }
}

fn run(args: &[String]) -> Result<()> {
    // `up --help` must print help, not build a pod.
    let Some(cmd) = args.first().filter(|_| !args.iter().any(|a| matches!(a.as_str(), "-h" | "--help" | "help")))
    else {
        println!("{USAGE}");
        return Ok(());
    };
    let o = Opts(&args[1..]);
    match cmd.as_str() {
        "up" | "status" if !o.0.is_empty() => bail!("`{cmd}` takes no arguments (got {:?}); see --help", o.0),
        "up" => {
            let pod = Pod::up(&PodOptions::default())?;
            let s = pod.state.clone();
            // Leave it running: the state file lets `down` find it.
            std::mem::forget(pod);
            println!(
                "pod {name} is up: uid {uid}, network namespace {ns}\n\
                 \x20 Envoy (sidecar) http://{ip}:15006/ -> nginx (app) 127.0.0.1:8080 inside the pod\n\
                 \x20 try: curl http://{ip}:15006/  |  curl http://{ip}:15006/delay  |  curl http://{ip}:15006/error\n\
                 \x20 Envoy admin: ip netns exec {ns} curl -s 127.0.0.1:9901/stats\n\
                 \x20 tear down:   pmoas-testbed down {name}",
                name = s.name,
                uid = s.uid,
                ns = s.netns,
                ip = s.pod_ip
            );
            Ok(())
        }
        "status" => {
            for s in list_states() {
                let alive = s.processes.iter().filter(|p| p.alive()).count();
                println!("{} uid={} pod_ip={} processes={}/{}", s.name, s.uid, s.pod_ip, alive, s.processes.len());
            }
            Ok(())
        }
        "down" => {
            let all = o.flag("--all");
            let name = o.0.first().filter(|n| !n.starts_with("--"));
            if !all && name.is_none() {
                bail!("down needs a NAME (see `pmoas-testbed status`) or --all");
            }
            let mut found = false;
            for s in list_states().into_iter().filter(|s| all || Some(&s.name) == name) {
                found = true;
                teardown(&s).with_context(|| format!("tearing down {}", s.name))?;
                println!("{} is down", s.name);
            }
            if !found && !all {
                bail!("no testbed named {}", name.map(String::as_str).unwrap_or(""));
            }
            Ok(())
        }
        "tcp-server" => {
            let listener = TcpListener::bind(o.addr("--listen")?).context("binding")?;
            eprintln!("listening {}", listener.local_addr()?);
            let r =
                traffic::tcp_server(listener, o.num("--count", 1)?, o.num("--send", 0)? as usize, o.flag("--reset"));
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        "tcp-client" => {
            let r = traffic::tcp_client(o.addr("--connect")?, o.num("--count", 1)?, o.num("--send", 0)? as usize);
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        "http" => {
            let r = traffic::http_load(
                o.addr("--connect")?,
                o.value("--path").unwrap_or("/"),
                o.num("--count", 1)?,
                o.num("--concurrency", 1)?,
            );
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        "burn" => {
            let r = load::burn(o.num("--cpu-ms", 1000)? as f64 / 1000.0);
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        "hog" => {
            let held = load::touch(o.num("--mib", 100)? as usize);
            println!("touched");
            std::io::Write::flush(&mut std::io::stdout())?;
            load::hold(std::time::Duration::from_secs(3600));
            drop(held);
            Ok(())
        }
        "disk" => {
            let path = std::path::PathBuf::from(o.value("--file").context("--file PATH is required")?);
            let direct = o.flag("--direct");
            let r = if o.flag("--read") {
                load::read_file(&path, direct)?
            } else {
                load::write_file(&path, o.num("--write-mib", 20)? as usize, direct)?
            };
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}
