//! `pmoas-testbed`: build a sidecar pod for a demo, tear it down, and the
//! traffic tools tests run inside containers.

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pmoas_testbed::{Layout, Pod, PodOptions, conns, list_states, load, teardown, traffic};

const USAGE: &str = "\
pmoas-testbed: a pod with a real sidecar (Envoy -> nginx) on this machine, as root.

Usage:
  pmoas-testbed up [OPTIONS]       build a pod and leave it running; prints how to use it
      --layout plain|istio         plain (default): clients call Envoy on POD:15006;
                                   istio: istio-init's iptables REDIRECT (inbound -> 15006,
                                   the app's outbound -> 15001), Envoy as uid 1337 reaching
                                   nginx from 127.0.0.6; clients call POD:8080
      --upstream                   a second, plain pod on the same bridge (10.200.N.21);
                                   GET /upstream makes nginx call it through the sidecar
                                   (istio: also GET /upstream-svc, by a service VIP 10.201.N.10:80)
      --grpc                       a gRPC Greeter (testbed/grpc_server.py) behind Envoy, h2c;
                                   names starting with \"fail\" get UNAVAILABLE
      --fault-delay DURATION       Envoy delays every inbound request by DURATION (50ms, 1s)
  pmoas-testbed status             list the testbed pods of this machine
  pmoas-testbed down NAME|--all    stop a pod (or all) and remove every trace of it

Traffic tools (tests run them inside containers; they print a JSON report):
  pmoas-testbed tcp-server --listen ADDR --count N [--send BYTES] [--reset]
      accept N connections: read to EOF, answer BYTES (or reset), close.
      Prints `listening ADDR` on stderr once ready.
  pmoas-testbed tcp-client --connect ADDR --count N [--send BYTES] [--hold]
      N connections: send BYTES, shut down writing, read to EOF; with --hold
      all N are opened first and held open together, then exchange (keep N
      below the listener's accept backlog, 128 for tcp-server: it accepts one
      at a time, and the connects past its queue wait for their timeout).
  pmoas-testbed conn-server --listen ADDR [--listeners K] [--hold]
      listen on K consecutive ports from ADDR's (default 1) until stdin closes:
      hold every accepted connection open, or (without --hold) read each to
      EOF and close it. Prints `listening ...` on stderr once ready, and
      {accepted, bytes_received} when stdin closes.
  pmoas-testbed conn-client --connect ADDR [--listeners K] --count N
      open N connections round robin over the K ports, one after another,
      print {connected, failed, seconds} and hold them until stdin closes.
  pmoas-testbed conn-client --connect ADDR [--listeners K] --rate R --seconds S [--threads T] [--send BYTES]
      short connections at R per second (0: as fast as they go) for S
      seconds on T threads (default 4): connect, send, close the write side,
      read to EOF, close. Prints {connected, failed, seconds}.
  pmoas-testbed http --connect ADDR [--path /] --count N [--concurrency C] [--stagger-ms MS]
      N GET requests with Connection: close, C at a time; with --stagger-ms the
      C clients start spread over MS instead of together.
  pmoas-testbed fetch --connect ADDR --count N [--concurrency C] [--sizes 64,4096,...]
      N keep-alive GETs of nginx's /files/<size> over C connections, every body
      compared byte for byte with what the testbed wrote (sizes: 64, 4096,
      65536, 300000, 1048576; default all).

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
    /// Refuses options a command does not take (a typo would otherwise be
    /// ignored and its default used).
    fn only(&self, cmd: &str, values: &[&str], flags: &[&str]) -> Result<()> {
        let mut args = self.0.iter();
        while let Some(a) = args.next() {
            if values.contains(&a.as_str()) {
                args.next();
            } else if !flags.contains(&a.as_str()) {
                bail!("`{cmd}` does not take `{a}`; see --help");
            }
        }
        Ok(())
    }
    fn addr(&self, key: &str) -> Result<SocketAddr> {
        let v = self.value(key).with_context(|| format!("{key} ADDR is required"))?;
        v.parse().with_context(|| format!("{key} {v}: not an address"))
    }
}

/// `up`'s flags; anything else is an error.
fn up_options(o: &Opts<'_>) -> Result<PodOptions> {
    let mut opts = PodOptions::default();
    let mut i = 0;
    while i < o.0.len() {
        let takes_value = |i: usize| o.0.get(i + 1).with_context(|| format!("{} needs a value", o.0[i]));
        match o.0[i].as_str() {
            "--layout" => {
                opts.layout = takes_value(i)?.parse()?;
                i += 1;
            }
            "--upstream" => opts.upstream = true,
            "--grpc" => opts.grpc = true,
            "--fault-delay" => {
                opts.fault_delay = Some(parse_duration(takes_value(i)?)?);
                i += 1;
            }
            other => bail!("`up` does not take {other:?}; see --help"),
        }
        i += 1;
    }
    Ok(opts)
}

/// `50ms`, `1.5s`, `250us`.
fn parse_duration(v: &str) -> Result<Duration> {
    let (num, unit) = v.find(|c: char| c.is_ascii_alphabetic()).map_or((v, "s"), |i| v.split_at(i));
    let n: f64 = num.parse().with_context(|| format!("{v}: not a duration (50ms, 1s)"))?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        _ => bail!("{v}: unit must be s, ms or us"),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        bail!("{v}: not a duration");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// How to use a pod that is up.
fn describe(pod: &Pod, opts: &PodOptions) -> String {
    let s = &pod.state;
    let ns = &s.netns;
    let at = pod.inbound_addr();
    let mut out = format!("pod {} is up: uid {}, network namespace {ns}, layout {:?}\n", s.name, s.uid, s.layout);
    match s.layout {
        Layout::Plain => {
            out.push_str(&format!("  Envoy (sidecar) http://{at}/ -> nginx (app) 127.0.0.1:8080 inside the pod\n"))
        }
        Layout::Istio => out.push_str(&format!(
            "  http://{at}/ is REDIRECTed to Envoy :15006 (uid 1337) -> nginx 127.0.0.1:8080 from 127.0.0.6\n\
             \x20 rules: ip netns exec {ns} iptables-save -t nat\n"
        )),
    }
    out.push_str(&format!(
        "  try: curl http://{at}/  |  curl http://{at}/delay  |  curl http://{at}/error  |  curl http://{at}/whoami\n"
    ));
    if let Some(d) = opts.fault_delay {
        out.push_str(&format!("  every inbound request is delayed {d:?} by Envoy (fault filter)\n"));
    }
    if let Some(u) = pod.upstream() {
        out.push_str(&format!(
            "  upstream pod {} at {} (its own Envoy -> nginx): curl http://{at}/upstream makes the app call it \
             through the sidecar\n",
            u.state.name,
            u.service_addr()
        ));
    }
    if let Some(vip) = pod.upstream_service() {
        out.push_str(&format!(
            "  curl http://{at}/upstream-svc makes the app call the upstream's service VIP {vip} (as a ClusterIP)\n"
        ));
    }
    if s.grpc {
        out.push_str(&format!(
            "  gRPC helloworld.Greeter/SayHello at {g} (h2c; names starting with \"fail\" get UNAVAILABLE):\n\
             \x20   target/pmoas-venv/bin/python testbed/grpc_client.py --target {g} --count 100 --fail 10 --concurrency 8\n",
            g = pod.grpc_addr()
        ));
    }
    out.push_str(&format!(
        "  Envoy admin: ip netns exec {ns} curl -s 127.0.0.1:9901/stats\n  tear down:   pmoas-testbed down {}",
        s.name
    ));
    out
}

fn run(args: &[String]) -> Result<()> {
    // `up --help` must print help, not build a pod.
    let Some(cmd) = args.first().filter(|_| !args.iter().any(|a| matches!(a.as_str(), "-h" | "--help" | "help")))
    else {
        println!("{USAGE}");
        return Ok(());
    };
    let o = Opts(&args[1..]);
    let (values, flags): (&[&str], &[&str]) = match cmd.as_str() {
        "tcp-server" => (&["--listen", "--count", "--send"], &["--reset"]),
        "tcp-client" => (&["--connect", "--count", "--send"], &["--hold"]),
        "conn-server" => (&["--listen", "--listeners"], &["--hold"]),
        "conn-client" => (&["--connect", "--listeners", "--count", "--rate", "--seconds", "--threads", "--send"], &[]),
        "http" => (&["--connect", "--path", "--count", "--concurrency", "--stagger-ms"], &[]),
        "fetch" => (&["--connect", "--sizes", "--count", "--concurrency"], &[]),
        "burn" => (&["--cpu-ms"], &[]),
        "hog" => (&["--mib"], &[]),
        "disk" => (&["--file", "--write-mib"], &["--direct", "--read"]),
        _ => (&[], &[]),
    };
    if !values.is_empty() {
        o.only(cmd, values, flags)?;
    }
    match cmd.as_str() {
        "status" if !o.0.is_empty() => bail!("`{cmd}` takes no arguments (got {:?}); see --help", o.0),
        "up" => {
            let opts = up_options(&o)?;
            let pod = Pod::up(&opts)?;
            let text = describe(&pod, &opts);
            // Leave it running: the state file lets `down` find it.
            std::mem::forget(pod);
            println!("{text}");
            Ok(())
        }
        "status" => {
            for s in list_states() {
                let alive = s.processes.iter().filter(|p| p.alive()).count();
                let upstream = s.upstream.as_ref().map(|u| format!(" upstream={}", u.pod_ip)).unwrap_or_default();
                println!(
                    "{} uid={} pod_ip={} layout={:?}{upstream} processes={}/{}",
                    s.name,
                    s.uid,
                    s.pod_ip,
                    s.layout,
                    alive,
                    s.processes.len()
                );
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
            let r = traffic::tcp_client_held(
                o.addr("--connect")?,
                o.num("--count", 1)?,
                o.num("--send", 0)? as usize,
                o.flag("--hold"),
            );
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        "conn-server" => {
            let listeners = u16::try_from(o.num("--listeners", 1)?).context("--listeners")?;
            let r = conns::serve(o.addr("--listen")?, listeners, o.flag("--hold"))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        "conn-client" => {
            let listeners = u16::try_from(o.num("--listeners", 1)?).context("--listeners")?;
            let connect = o.addr("--connect")?;
            match (o.value("--count"), o.value("--rate")) {
                (Some(_), None) => conns::hold(connect, listeners, o.num("--count", 1)?),
                (None, Some(rate)) => {
                    let rate: f64 = rate.parse().with_context(|| format!("--rate {rate}: not a number"))?;
                    let seconds: f64 = o.value("--seconds").unwrap_or("10").parse().context("--seconds")?;
                    let r = conns::churn(
                        connect,
                        listeners,
                        rate,
                        seconds,
                        o.num("--threads", 4)?,
                        o.num("--send", 0)? as usize,
                    );
                    println!("{}", serde_json::to_string(&r)?);
                    Ok(())
                }
                _ => bail!("conn-client takes --count N (hold) or --rate R (churn)"),
            }
        }
        "http" => {
            let r = traffic::http_load_staggered(
                o.addr("--connect")?,
                o.value("--path").unwrap_or("/"),
                o.num("--count", 1)?,
                o.num("--concurrency", 1)?,
                Duration::from_millis(o.num("--stagger-ms", 0)?),
            );
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        "fetch" => {
            let sizes: Vec<usize> = match o.value("--sizes") {
                Some(list) => list
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().with_context(|| format!("--sizes: `{s}` is not a size")))
                    .collect::<Result<_>>()?,
                None => traffic::FILE_SIZES.to_vec(),
            };
            if let Some(s) = sizes.iter().find(|s| !traffic::FILE_SIZES.contains(s)) {
                bail!("--sizes: the testbed serves /files/ of {:?} bytes, not {s}", traffic::FILE_SIZES);
            }
            let r = traffic::fetch(o.addr("--connect")?, &sizes, o.num("--count", 1)?, o.num("--concurrency", 1)?);
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
