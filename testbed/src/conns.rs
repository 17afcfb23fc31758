//! Many TCP connections: held open by the ten thousand, or opened and closed
//! at a steady rate, on the loopback of a network namespace of our own (a
//! [`ScratchNetns`], whose port range and TIME_WAIT reuse are ours to set).
//!
//! The server listens on `listeners` consecutive ports, so the clients'
//! 4-tuples stay unique far beyond one port range; every tool counts what it
//! did and prints it as JSON, the truth the exporter's counts are held to.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The ephemeral ports of a [`ScratchNetns`]: wide, and above the ports
/// its servers listen on (below 10000), so a client's port never takes one.
pub const EPHEMERAL: &str = "10000 65535";

/// A network namespace of our own with its loopback up; deleted (with every
/// socket still in it, TIME_WAIT included) when dropped. Its sysctls are
/// its own: nothing of the host's changes.
pub struct ScratchNetns {
    pub name: String,
    file: fs::File,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl ScratchNetns {
    /// `pmoas-<prefix>-<pid>`, loopback up, a wide ephemeral port range
    /// ([`EPHEMERAL`]) and TIME_WAIT reuse for outgoing connections.
    pub fn create(prefix: &str) -> Result<ScratchNetns> {
        let name = format!("pmoas-{prefix}-{}", std::process::id());
        if fs::metadata(format!("/run/netns/{name}")).is_ok() {
            let _ = ip(&["netns", "del", &name]);
        }
        ip(&["netns", "add", &name])?;
        let open = || -> Result<ScratchNetns> {
            let file = fs::File::open(format!("/run/netns/{name}")).context("opening the namespace")?;
            let ns = ScratchNetns { name: name.clone(), file };
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            ns.sysctl("net/ipv4/ip_local_port_range", EPHEMERAL)?;
            ns.sysctl("net/ipv4/tcp_tw_reuse", "1")?;
            Ok(ns)
        };
        open().inspect_err(|_| {
            let _ = ip(&["netns", "del", &name]);
        })
    }

    /// Writes /proc/sys/`key` inside the namespace (a per-namespace sysctl).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_string());
        crate::net::in_netns(&self.file, move || {
            fs::write(format!("/proc/sys/{key}"), &value).with_context(|| format!("sysctl {key}={value}"))
        })?
    }

    /// TCP sockets of the namespace by state, as /proc/net/tcp{,6} list
    /// them there (time-wait sockets, FIN_WAIT2 ones among them, marked `tw`).
    pub fn tcp_states(&self) -> Result<Vec<(String, usize)>> {
        crate::net::in_netns(&self.file, || {
            const NAMES: [&str; 12] = [
                "?",
                "ESTABLISHED",
                "SYN_SENT",
                "SYN_RECV",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT",
                "CLOSE",
                "CLOSE_WAIT",
                "LAST_ACK",
                "LISTEN",
                "CLOSING",
            ];
            let mut by: std::collections::BTreeMap<String, usize> = Default::default();
            for f in ["tcp", "tcp6"] {
                // thread-self: /proc/self/net is the namespace of the process, not of this thread.
                let text = fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default();
                for l in text.lines().skip(1) {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    let state = cols.get(3).and_then(|s| usize::from_str_radix(s, 16).ok()).unwrap_or(0);
                    let tw = cols.get(5).is_some_and(|t| t.starts_with("03:"));
                    let name = format!("{}{}", NAMES.get(state).unwrap_or(&"?"), if tw { " (tw)" } else { "" });
                    *by.entry(name).or_default() += 1;
                }
            }
            by.into_iter().collect()
        })
    }

    /// The namespace file: [`crate::procs::command_in`] enters it.
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Raises this process's open-file limit towards `n`, as far as the hard
/// limit allows (raising that needs CAP_SYS_RESOURCE, which a container may
/// not have); the soft limit now in force.
pub fn raise_nofile(n: u64) -> u64 {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        if l.rlim_cur < n {
            let up = libc::rlimit { rlim_cur: n, rlim_max: l.rlim_max.max(n) };
            let within = libc::rlimit { rlim_cur: n.min(l.rlim_max), rlim_max: l.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return n;
            }
            if libc::setrlimit(libc::RLIMIT_NOFILE, &within) == 0 {
                return within.rlim_cur;
            }
        }
        l.rlim_cur
    }
}

/// A listener with a deep accept queue (std's is 128): a burst of connects
/// never waits for a SYN retransmit.
fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let std_listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    // SAFETY: listen(2) again on our own bound socket only raises its backlog.
    if unsafe { libc::listen(std_listener.as_raw_fd(), 65535) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    Ok(std_listener)
}

fn port_of(first: SocketAddr, i: u64, listeners: u16) -> SocketAddr {
    let mut a = first;
    a.set_port(first.port() + (i % u64::from(listeners.max(1))) as u16);
    a
}

/// What the server did until its stdin closed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServeReport {
    pub accepted: u64,
    pub bytes_received: u64,
}

/// Accepts on `listeners` ports from `first` until stdin closes. `hold`:
/// keep every accepted connection open (as many as the open file limit
/// allows: spread more over several servers); otherwise read each to EOF
/// and close it (the client closes first). Says `listening` on stderr once
/// every port listens.
pub fn serve(first: SocketAddr, listeners: u16, hold: bool) -> Result<ServeReport> {
    raise_nofile(1 << 20);
    let accepted = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let mut sockets = Vec::new();
    for i in 0..listeners {
        sockets.push(listen(port_of(first, u64::from(i), listeners))?);
    }
    for l in sockets {
        let (accepted, received, held) = (accepted.clone(), received.clone(), held.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((mut s, _)) = l.accept() else {
                    // EMFILE or the like: back off rather than spin.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                if hold {
                    held.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                    continue;
                }
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    eprintln!("listening {first} +{listeners}");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(ServeReport { accepted: accepted.load(Ordering::Relaxed), bytes_received: received.load(Ordering::Relaxed) })
}

/// What a client did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnReport {
    pub connected: u64,
    pub failed: u64,
    pub seconds: f64,
}

/// Opens `count` connections to the `listeners` ports from `first` (round
/// robin), one after another, and returns them, still open.
pub fn open(first: SocketAddr, listeners: u16, count: u64) -> Result<(Vec<TcpStream>, ConnReport)> {
    let limit = raise_nofile(count + 64);
    if limit < count + 64 {
        bail!(
            "{count} connections need {} open files; this process may have {limit} (hard limit): use more processes",
            count + 64
        );
    }
    let t0 = Instant::now();
    let mut open = Vec::with_capacity(count as usize);
    let mut r = ConnReport::default();
    for i in 0..count {
        match TcpStream::connect_timeout(&port_of(first, i, listeners), Duration::from_secs(10)) {
            Ok(s) => {
                open.push(s);
                r.connected += 1;
            }
            Err(_) => r.failed += 1,
        }
    }
    r.seconds = t0.elapsed().as_secs_f64();
    Ok((open, r))
}

/// [`open`], then prints the report (one JSON line on stdout) and holds the
/// connections until stdin closes.
pub fn hold(first: SocketAddr, listeners: u16, count: u64) -> Result<()> {
    let (held, r) = open(first, listeners, count)?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", serde_json::to_string(&r)?)?;
    out.flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
    Ok(())
}

/// Short connections at `rate` per second (0: as fast as they go) for
/// `seconds`, on `threads` threads: each connects, sends `send` bytes,
/// closes its write side, reads to EOF and closes (the client closes first,
/// so TIME_WAIT is the client's: [`ScratchNetns`] reuses it).
pub fn churn(first: SocketAddr, listeners: u16, rate: f64, seconds: f64, threads: u64, send: usize) -> ConnReport {
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let (connected, failed) = (connected.clone(), failed.clone());
            let payload = vec![b'c'; send];
            std::thread::spawn(move || {
                // Each thread its own share of the rate, its own listener.
                let every = (rate > 0.0).then(|| Duration::from_secs_f64(threads as f64 / rate));
                let mut next = t0 + Duration::from_secs_f64(t as f64 / rate.max(1.0));
                let mut buf = [0u8; 1024];
                let mut i = t;
                loop {
                    if let Some(every) = every {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += every;
                    }
                    if Instant::now() >= end {
                        break;
                    }
                    match TcpStream::connect_timeout(&port_of(first, i, listeners), Duration::from_secs(5)) {
                        Ok(mut s) => {
                            connected.fetch_add(1, Ordering::Relaxed);
                            let _ = s.write_all(&payload);
                            let _ = s.shutdown(Shutdown::Write);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                            while let Ok(n) = s.read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += threads;
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    ConnReport {
        connected: connected.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds: t0.elapsed().as_secs_f64(),
    }
}
