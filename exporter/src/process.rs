//! The exporter's own cost, as the standard `process_*` metrics every
//! Prometheus client library exports (node_exporter's names), read from
//! /proc/self at scrape time: CPU, resident and virtual memory, open and
//! allowed file descriptors, start time. A file that cannot be read leaves
//! its series out rather than exporting a wrong 0.

use pmoas_collectors::metrics::{Desc, MetricSet};

pub const CPU: Desc = Desc::counter("process_cpu_seconds_total", "User and system CPU time spent, in seconds.");
pub const RESIDENT: Desc = Desc::gauge("process_resident_memory_bytes", "Resident memory size in bytes.");
pub const VIRTUAL: Desc = Desc::gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.");
pub const OPEN_FDS: Desc = Desc::gauge("process_open_fds", "Number of open file descriptors.");
pub const MAX_FDS: Desc = Desc::gauge("process_max_fds", "Maximum number of open file descriptors.");
pub const START: Desc =
    Desc::gauge("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds.");

/// Fields of /proc/self/stat after the command name: (utime, stime,
/// starttime in clock ticks; vsize and rss in bytes and pages).
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name is in parentheses and may hold spaces and ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14.
    let n = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
    Some(Stat { utime: n(14)?, stime: n(15)?, starttime: n(22)?, vsize: n(23)?, rss_pages: n(24)? })
}

fn soft_fd_limit(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" { Some(f64::INFINITY) } else { soft.parse().ok() }
}

fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

pub fn export(set: &mut MetricSet) {
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let (ticks, page) = (ticks.max(1) as f64, page.max(1) as f64);
    if let Some(s) = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_stat) {
        set.counter(&CPU, vec![], (s.utime + s.stime) as f64 / ticks);
        set.gauge(&RESIDENT, vec![], s.rss_pages as f64 * page);
        set.gauge(&VIRTUAL, vec![], s.vsize as f64);
        if let Some(btime) = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(boot_time) {
            set.gauge(&START, vec![], btime as f64 + s.starttime as f64 / ticks);
        }
    }
    // Since Linux 6.2 the directory's size is the count: no walk over the
    // thousands of descriptors a large node's cgroup directories take.
    let open_fds = std::fs::metadata("/proc/self/fd")
        .ok()
        .map(|m| m.len())
        .filter(|&n| n > 0)
        .or_else(|| std::fs::read_dir("/proc/self/fd").ok().map(|dir| dir.count() as u64));
    if let Some(n) = open_fds {
        set.gauge(&OPEN_FDS, vec![], n as f64);
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(soft_fd_limit) {
        set.gauge(&MAX_FDS, vec![], max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_tricky_command_name() {
        let line = "4242 (pmoas) x (y)) S 1 4242 4242 0 -1 4194560 2431 0 0 0 150 37 0 0 20 0 9 0 12345 \
                    123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat { utime: 150, stime: 37, starttime: 12345, vsize: 123456789, rss_pages: 2048 })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn fd_limit_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(soft_fd_limit(limits), Some(1024.0));
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1700000000\n"), Some(1_700_000_000));
    }

    #[test]
    fn this_process_is_measured() {
        let mut set = MetricSet::new();
        export(&mut set);
        for name in
            ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds"]
        {
            assert!(set.get(name, &[]).is_some(), "{name}");
        }
    }

    /// The count by the directory's size agrees with a walk of it (other
    /// tests of this binary open files meanwhile: a little slack).
    #[test]
    fn open_descriptors_are_counted() {
        let held: Vec<std::fs::File> = (0..200).map(|_| std::fs::File::open("/proc/self/stat").unwrap()).collect();
        let mut set = MetricSet::new();
        export(&mut set);
        let walked = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64;
        let Some(pmoas_collectors::metrics::Value::Gauge(n)) = set.get("process_open_fds", &[]).cloned() else {
            panic!("no process_open_fds")
        };
        assert!((n - walked).abs() <= 8.0 && n >= held.len() as f64, "counted {n}, walked {walked}");
    }
}
