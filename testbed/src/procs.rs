//! Starting processes inside a container (its cgroups, its namespace), and
//! stopping them again by PID, never anything we did not start.

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cgroups::CgroupSet;

/// A `Command` whose child joins `cgroups` and, if given, the network
/// namespace `netns` (an open fd that outlives the spawn) before exec.
pub fn command_in(program: impl AsRef<OsStr>, cgroups: &CgroupSet, netns: Option<i32>) -> Command {
    let procs: Vec<CString> = cgroups
        .procs_files()
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()).expect("no NUL in cgroup paths"))
        .collect();
    let mut cmd = Command::new(program);
    // SAFETY: between fork and exec only async-signal-safe calls (open,
    // write, close, setns) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for path in &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if !ok {
                    return Err(err);
                }
            }
            if let Some(fd) = netns
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs `argv` through `cmd` (a `/bin/sh` command in the right place) in
/// the background of a shell that exits at once, so the process is
/// reparented and survives us; returns its PID.
pub fn detached(cmd: &mut Command, argv: &[String], log: &Path) -> Result<Tracked> {
    let script = r#"log="$1"; shift; setsid "$@" >>"$log" 2>&1 </dev/null & echo $!"#;
    let out = cmd
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(log)
        .args(argv)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", argv[0]))?;
    if !out.status.success() {
        bail!("starting {} failed: {}", argv[0], out.status);
    }
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().context("reading the PID")?;
    Tracked::of(pid, &argv[0])
}

/// A process we started: its PID and start time, so a recycled PID is
/// never mistaken for it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tracked {
    pub name: String,
    pub pid: u32,
    pub start_time: u64,
}

/// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

impl Tracked {
    pub fn of(pid: u32, name: &str) -> Result<Tracked> {
        let start_time = start_time(pid).with_context(|| format!("{name} (pid {pid}) exited at once"))?;
        let name = Path::new(name).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Tracked { name, pid, start_time })
    }

    pub fn named(mut self, name: &str) -> Result<Tracked> {
        self.name = Path::new(name).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(self)
    }

    /// Still running, and still the process we started?
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
            && fs::read_to_string(format!("/proc/{}/stat", self.pid)).map(|s| !s.contains(") Z ")).unwrap_or(false)
    }

    /// SIGTERM, then SIGKILL after `grace`; waits until it is gone.
    pub fn stop(&self, grace: Duration) -> Result<()> {
        if !self.alive() {
            return Ok(());
        }
        let signal = |sig| {
            // SAFETY: kill(2) on a PID we verified is ours just now.
            unsafe { libc::kill(self.pid as i32, sig) };
        };
        signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.alive() {
            if Instant::now() > deadline {
                signal(libc::SIGKILL);
                std::thread::sleep(Duration::from_millis(50));
                if self.alive() && Instant::now() > deadline + Duration::from_secs(2) {
                    bail!("{} (pid {}) survived SIGKILL", self.name, self.pid);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_stable_and_a_recycled_pid_is_not_ours() {
        let me = Tracked::of(std::process::id(), "test").unwrap();
        assert!(me.alive());
        let impostor = Tracked { start_time: me.start_time + 1, ..me.clone() };
        assert!(!impostor.alive());
    }
}
