//! Finding a cgroup's v1 directories from its v2 path.
//!
//! On a hybrid host a container's v1 path need not equal its v2 path: the
//! runtime may sit in a different v1 cgroup than in v2 (this project's
//! machines put the memory hierarchy under `/process_api/<id>` while v2 is
//! at `/`). The truth is in `/proc/<pid>/cgroup` of a process of the
//! container. From each such pair we also learn a prefix rule
//! (`/kubepods.slice/...` in v2 is `/process_api/<id>/kubepods.slice/...` in
//! memory), which names the v1 directories of cgroups without a process of
//! their own: pod cgroups, and containers whose processes have exited.
//! Without either, the v2 path is tried as is (kubelet and most runtimes
//! use the same path in every hierarchy).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[cfg(doc)]
use pmoas_discovery::cgroupfs;

use super::files::Dirs;

/// The v1 controllers whose files the collector reads.
pub const V1_CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "blkio"];

/// Prefix rules kept per controller; a host has a handful (one per
/// runtime parent), this only bounds a pathological one.
const MAX_RULES_PER_CONTROLLER: usize = 32;

/// Learned v2 -> v1 prefix rules, per controller.
#[derive(Debug, Default)]
pub struct PathMap {
    rules: BTreeMap<&'static str, Vec<(String, String)>>,
}

impl PathMap {
    /// The directories of the cgroup at v2 path `relative` (below the v2
    /// mount), v1 ones resolved from the view of a process in it (`own`:
    /// its `/proc/<pid>/cgroup`, [`cgroupfs::process_cgroups`]; empty when
    /// it has none or it could not be read). `complete` is false when a v1
    /// directory is still unknown (asked again on a later scrape).
    pub fn dirs(
        &mut self,
        v2_root: &Path,
        v1_roots: &BTreeMap<String, PathBuf>,
        relative: &str,
        own: &[(String, String)],
    ) -> (Dirs, bool) {
        // The process must still be in this cgroup (it may have just moved).
        let in_cgroup = own.iter().any(|(c, p)| c.is_empty() && p == relative);
        let mut dirs = Dirs { v2: v2_root.join(relative.trim_start_matches('/')), ..Dirs::default() };
        let mut complete = true;
        for controller in V1_CONTROLLERS {
            let Some(root) = v1_roots.get(controller) else { continue };
            let from_pid =
                own.iter().find(|(c, _)| in_cgroup && c == controller).map(|(_, p)| p.clone()).filter(|p| p != "/");
            let v1_path = match from_pid {
                Some(p) => {
                    self.learn(controller, relative, &p);
                    Some(p)
                }
                None => self.translate(controller, relative),
            };
            let candidates = v1_path.into_iter().chain(std::iter::once(relative.to_string()));
            let found = candidates.map(|p| root.join(p.trim_start_matches('/'))).find(|d| d.is_dir());
            complete &= found.is_some();
            let slot = match controller {
                "cpu" => &mut dirs.cpu,
                "cpuacct" => &mut dirs.cpuacct,
                "memory" => &mut dirs.memory,
                _ => &mut dirs.blkio,
            };
            *slot = found;
        }
        (dirs, complete)
    }

    /// Records the rule that turns `v2` into `v1`: the part after their
    /// common trailing components is swapped.
    fn learn(&mut self, controller: &'static str, v2: &str, v1: &str) {
        let a: Vec<&str> = v2.split('/').filter(|s| !s.is_empty()).collect();
        let b: Vec<&str> = v1.split('/').filter(|s| !s.is_empty()).collect();
        let common = a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count();
        if common == 0 {
            return;
        }
        let rule = (format!("/{}", a[..a.len() - common].join("/")), format!("/{}", b[..b.len() - common].join("/")));
        if rule.0 == rule.1 {
            return;
        }
        let rules = self.rules.entry(controller).or_default();
        if !rules.contains(&rule) && rules.len() < MAX_RULES_PER_CONTROLLER {
            rules.push(rule);
            // Longest v2 prefix first: the most specific rule wins.
            rules.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        }
    }

    fn translate(&self, controller: &str, v2: &str) -> Option<String> {
        self.rules.get(controller)?.iter().find_map(|(from, to)| {
            let rest = if from == "/" { Some(v2) } else { v2.strip_prefix(from.as_str()) }?;
            if !(rest.is_empty() || rest.starts_with('/') || from == "/") {
                return None;
            }
            Some(format!("{}/{}", to.trim_end_matches('/'), rest.trim_start_matches('/')))
        })
    }
}

/// Directories of the cgroup v2 tree below `root`, `root` included (the
/// kernel map is keyed by cgroup: every one may need an entry). The walk
/// stops 8 levels down, like discovery's.
pub fn count_cgroups(root: &Path) -> u64 {
    let mut n = 0u64;
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        n += 1;
        if depth >= 8 {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_prefix_rule_and_applies_it_to_pods_and_empty_containers() {
        let mut m = PathMap::default();
        m.learn(
            "memory",
            "/kubepods.slice/kubepods-besteffort.slice/pod1.slice/cri-containerd-a.scope",
            "/process_api/9b/kubepods.slice/kubepods-besteffort.slice/pod1.slice/cri-containerd-a.scope",
        );
        assert_eq!(
            m.translate("memory", "/kubepods.slice/kubepods-besteffort.slice/pod1.slice").as_deref(),
            Some("/process_api/9b/kubepods.slice/kubepods-besteffort.slice/pod1.slice")
        );
        assert_eq!(m.translate("cpu", "/kubepods.slice"), None, "rules are per controller");

        let mut nested = PathMap::default();
        nested.learn("memory", "/user.slice/x/kubepods.slice/c", "/kubepods.slice/c");
        assert_eq!(nested.translate("memory", "/user.slice/x/kubepods.slice/d").as_deref(), Some("/kubepods.slice/d"));
        assert_eq!(nested.translate("memory", "/user.slice/xy/other"), None, "prefix matches whole components");
    }

    #[test]
    fn identical_paths_need_no_rule() {
        let mut m = PathMap::default();
        m.learn("memory", "/kubepods/pod1/abc", "/kubepods/pod1/abc");
        m.learn("memory", "/a/b", "/c/d");
        assert!(m.rules.get("memory").is_none_or(|r| r.is_empty()), "{:?}", m.rules);
    }

    #[test]
    fn finds_v1_dirs_through_a_process_then_through_the_rule() {
        // A hybrid layout in a temp dir: v2 at /kube/c1, memory v1 at /api/kube/c1.
        let tmp = std::env::temp_dir().join(format!("pmoas-paths-{}", std::process::id()));
        let v2 = tmp.join("unified");
        let mem = tmp.join("memory");
        for d in [v2.join("kube/c1"), v2.join("kube/c2"), mem.join("api/kube/c1"), mem.join("api/kube/c2")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let procfs = tmp.join("proc");
        std::fs::create_dir_all(procfs.join("42")).unwrap();
        std::fs::write(procfs.join("42/cgroup"), "4:memory:/api/kube/c1\n0::/kube/c1\n").unwrap();
        let v1: BTreeMap<String, PathBuf> = [("memory".to_string(), mem.clone())].into();

        let own = pmoas_discovery::cgroupfs::process_cgroups(&procfs, 42).unwrap();
        let mut m = PathMap::default();
        let (d1, complete) = m.dirs(&v2, &v1, "/kube/c1", &own);
        assert!(complete);
        assert_eq!(d1.v2, v2.join("kube/c1"));
        assert_eq!(d1.memory, Some(mem.join("api/kube/c1")));
        assert_eq!(d1.cpu, None, "cpu is not mounted here");
        // c2 has no process: the rule learned from c1 finds it.
        let (d2, complete) = m.dirs(&v2, &v1, "/kube/c2", &[]);
        assert!(complete);
        assert_eq!(d2.memory, Some(mem.join("api/kube/c2")));
        // The pod level too.
        let (pod, _) = m.dirs(&v2, &v1, "/kube", &[]);
        assert_eq!(pod.memory, Some(mem.join("api/kube")));
        // A process that moved elsewhere is not trusted.
        let (d3, complete) = PathMap::default().dirs(&v2, &v1, "/kube/c2", &own);
        assert!(!complete);
        assert_eq!(d3.memory, None);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
