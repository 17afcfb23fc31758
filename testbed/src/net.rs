//! The pod's network: a namespace, a veth pair, a bridge on the host.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::PodState;

/// Bridge of testbed `index`.
pub fn bridge_name(index: u8) -> String {
    format!("pmtb{index}")
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Creates the first free bridge `pmtbN` (N in 1..=250) and returns N: the
/// creation is the lock, so concurrent testbeds never share a subnet.
pub fn claim_bridge() -> Result<u8> {
    for index in 1..=250u8 {
        let name = bridge_name(index);
        if fs::metadata(format!("/sys/class/net/{name}")).is_ok() {
            continue;
        }
        if ip(&["link", "add", &name, "type", "bridge"]).is_ok() {
            return Ok(index);
        }
    }
    bail!("no free testbed bridge pmtb1..pmtb250 (leftovers? `pmoas-testbed down --all`)")
}

/// Wires the namespace to the (already claimed) bridge; a pod that shares
/// another's bridge (an upstream pod) only adds its veth.
pub fn create_pod_network(s: &PodState) -> Result<()> {
    let host = format!("{}/24", s.host_ip);
    let pod = format!("{}/24", s.pod_ip);
    let host_ip = s.host_ip.to_string();
    let pod_ip = s.pod_ip.to_string();
    if !s.shares_bridge {
        ip(&["addr", "add", &host, "dev", &s.bridge])?;
        ip(&["link", "set", &s.bridge, "up"])?;
    }
    ip(&["netns", "add", &s.netns])?;
    ip(&["link", "add", &s.host_veth, "type", "veth", "peer", "name", "eth0", "netns", &s.netns])?;
    ip(&["link", "set", &s.host_veth, "master", &s.bridge, "up"])?;
    ip(&["-n", &s.netns, "addr", "add", &pod, "dev", "eth0"])?;
    ip(&["-n", &s.netns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &s.netns, "link", "set", "lo", "up"])?;
    ip(&["-n", &s.netns, "route", "add", "default", "via", &host_ip])?;
    // A reused address otherwise stalls 9-20 s on a stale ARP entry.
    let _ = ip(&["neigh", "flush", "to", &pod_ip, "dev", &s.bridge]);
    Ok(())
}

/// Routes `addr` on-link through the pod's eth0: on its bridge, where no
/// one answers for it unless some testbed pod has it.
pub fn route_on_link(s: &PodState, addr: std::net::Ipv4Addr) -> Result<()> {
    ip(&["-n", &s.netns, "route", "add", &format!("{addr}/32"), "dev", "eth0"])
}

/// Deletes namespace (taking the veth with it) and bridge (unless shared).
pub fn delete_pod_network(s: &PodState) -> Result<()> {
    let mut problems = Vec::new();
    if fs::metadata(format!("/run/netns/{}", s.netns)).is_ok()
        && let Err(e) = ip(&["netns", "del", &s.netns])
    {
        problems.push(e.to_string());
    }
    if fs::metadata(format!("/sys/class/net/{}", s.host_veth)).is_ok() {
        let _ = ip(&["link", "del", &s.host_veth]);
    }
    if !s.shares_bridge
        && fs::metadata(format!("/sys/class/net/{}", s.bridge)).is_ok()
        && let Err(e) = ip(&["link", "del", &s.bridge])
    {
        problems.push(e.to_string());
    }
    if problems.is_empty() { Ok(()) } else { bail!("{}", problems.join("; ")) }
}

/// Runs `f` on a fresh thread that has entered the namespace of `netns`.
pub fn in_netns<T: Send + 'static>(netns: &fs::File, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let fd = netns.try_clone()?;
    std::thread::spawn(move || -> Result<T> {
        // SAFETY: setns on this thread only; fd is a valid namespace file.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in the pod's namespace panicked"))?
}

/// Parses /proc/net/snmp or /proc/net/netstat (header line, value line,
/// per protocol) into `Proto.Field` -> value.
pub fn parse_snmp(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((proto, names)), Some((_, values))) = (names.split_once(':'), values.split_once(':')) else {
            continue;
        };
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse::<i64>() {
                out.insert(format!("{proto}.{n}"), v.max(0) as u64);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_pairs() {
        let text =
            "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm MaxConn RetransSegs OutRsts\nTcp: 1 -1 42 7\n";
        let m = parse_snmp(text);
        assert_eq!(m["Tcp.RetransSegs"], 42);
        assert_eq!(m["Tcp.OutRsts"], 7);
        assert_eq!(m["Tcp.MaxConn"], 0);
        assert_eq!(m["Ip.DefaultTTL"], 64);
    }
}
