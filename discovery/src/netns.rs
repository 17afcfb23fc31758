//! A network namespace seen through a process inside it (no setns
//! needed): which namespace it is (`/proc/<pid>/ns/net`), and its addresses
//! from /proc/<pid>/net: IPv4 from `fib_trie`'s local table, IPv6 from
//! `if_inet6`.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The inode of the network namespace `pid` lives in: equal inodes, one
/// namespace. Following another user's `ns/net` takes ptrace access
/// (CAP_SYS_PTRACE): without it this is EACCES, which callers report.
pub fn inode(procfs: &Path, pid: u32) -> io::Result<u64> {
    fs::metadata(procfs.join(pid.to_string()).join("ns/net")).map(|m| m.ino())
}

/// The inode of the network namespace of the process reading `procfs`
/// (its `self`, whatever PID namespace it was mounted from).
pub fn own_inode(procfs: &Path) -> io::Result<u64> {
    fs::metadata(procfs.join("self/ns/net")).map(|m| m.ino())
}

/// Local (host-scope `/32 host LOCAL`) IPv4 and all IPv6 addresses of the
/// network namespace `pid` lives in. Loopback addresses included. An error
/// when the IPv4 table cannot be read (the process is gone, or hidden by
/// hidepid); IPv6 may be disabled, so its file may be missing.
pub fn local_addresses(procfs: &Path, pid: u32) -> io::Result<Vec<IpAddr>> {
    let net = procfs.join(pid.to_string()).join("net");
    let mut out: Vec<IpAddr> =
        parse_fib_trie_local(&fs::read_to_string(net.join("fib_trie"))?).into_iter().map(IpAddr::V4).collect();
    if let Ok(t) = fs::read_to_string(net.join("if_inet6")) {
        out.extend(parse_if_inet6(&t).into_iter().map(IpAddr::V6));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn parse_fib_trie_local(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(ip) = t.strip_prefix("|-- ") {
            last = ip.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL")
            && let Some(ip) = last
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            if hex.len() != 32 {
                return None;
            }
            let v = u128::from_str_radix(hex, 16).ok()?;
            Some(Ipv6Addr::from(v))
        })
        .collect()
}

/// The 16-byte form the eBPF programs key addresses by: IPv6 as is, IPv4
/// as IPv4-mapped IPv6.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIB_TRIE: &str = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.200.0.0/24 2 0 2
        |-- 10.200.0.0
           /24 link UNICAST
        |-- 10.200.0.11
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.200.0.0/24 2 0 2
        |-- 10.200.0.11
           /32 host LOCAL
        |-- 10.200.0.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
";

    #[test]
    fn fib_trie_local_addresses() {
        assert_eq!(parse_fib_trie_local(FIB_TRIE), vec![Ipv4Addr::new(10, 200, 0, 11), Ipv4Addr::new(127, 0, 0, 1)]);
    }

    #[test]
    fn if_inet6_addresses() {
        let text = "00000000000000000000000000000001 01 80 10 80       lo\n\
                    fe800000000000000000000000000001 02 40 20 80     eth0\n";
        assert_eq!(parse_if_inet6(text), vec![Ipv6Addr::LOCALHOST, "fe80::1".parse::<Ipv6Addr>().unwrap()]);
    }

    #[test]
    fn addr16_maps_v4() {
        assert_eq!(addr16("10.0.0.1".parse().unwrap())[10..], [0xff, 0xff, 10, 0, 0, 1]);
        assert_eq!(addr16("::1".parse().unwrap())[15], 1);
    }

    #[test]
    fn own_namespace_has_loopback() {
        let addrs = local_addresses(Path::new("/proc"), std::process::id()).unwrap();
        assert!(addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addrs:?}");
        assert!(local_addresses(Path::new("/nonexistent"), 1).is_err(), "an unreadable table is an error");
    }

    #[test]
    fn own_namespace_inode() {
        let me = inode(Path::new("/proc"), std::process::id()).unwrap();
        assert_eq!(inode(Path::new("/proc"), std::process::id()).unwrap(), me);
        assert_eq!(own_inode(Path::new("/proc")).unwrap(), me);
        assert!(inode(Path::new("/nonexistent"), 1).is_err());
    }
}

/// TCP sockets open now (every state but LISTEN and TIME_WAIT) in every
/// network namespace of the node: one process of each namespace's
/// `/proc/PID/net/tcp` and `tcp6`. Processes this one may not look into
/// are skipped (the count is then a lower bound).
pub fn open_tcp_connections(procfs: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir(procfs) else { return 0 };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(ns) = inode(procfs, pid) else { continue };
        if !seen.insert(ns) {
            continue;
        }
        for file in ["tcp", "tcp6"] {
            if let Ok(text) = std::fs::read_to_string(procfs.join(format!("{pid}/net/{file}"))) {
                total += count_open(&text);
            }
        }
    }
    total
}

/// Lines of /proc/net/tcp whose state (4th column) is neither LISTEN (0A)
/// nor TIME_WAIT (06).
fn count_open(text: &str) -> u64 {
    text.lines().skip(1).filter(|l| !matches!(l.split_whitespace().nth(3), Some("0A" | "06") | None)).count() as u64
}

#[cfg(test)]
mod open_tests {
    #[test]
    fn listeners_and_time_wait_are_not_open_connections() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1\n\
            1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000 0 0 2 1\n\
            2: 0100007F:C351 0100007F:1F90 06 00000000:00000000 00:00000000 00000000 0 0 0 3\n\
            3: 0100007F:C352 0100007F:1F90 02 00000000:00000000 00:00000000 00000000 0 0 3 1\n";
        assert_eq!(super::count_open(text), 2);
    }
}
