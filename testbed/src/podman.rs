//! A real container engine for discovery tests: Podman (Debian's 4.3), set
//! up to work offline and apart from anything else on the host.
//!
//! Its own configuration and storage live in `target/pmoas-podman`
//! (`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`): runc (crun refuses hybrid
//! cgroups), the cgroupfs manager, file events, vfs storage, and one image
//! made locally from busybox-static (`localhost/pmoas-busybox:1`). Pods are
//! started with `podman kube play --network none`; the infra image is built
//! by Podman itself from catatonit. [`Podman::serve`] runs `podman system
//! service`, the Docker-compatible API, on a unix socket. A played pod is
//! removed with its cgroups, which `podman pod rm` leaves behind in cgroup2
//! and `name=systemd` on a hybrid host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const IMAGE: &str = "localhost/pmoas-busybox:1";

/// What Podman needs that may be missing.
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    for (path, pkg) in [
        ("/usr/bin/podman", "podman"),
        ("/usr/sbin/runc", "runc"),
        ("/usr/bin/catatonit", "catatonit"),
        ("/bin/busybox", "busybox-static"),
    ] {
        if !Path::new(path).exists() {
            missing.push(format!("{path} (apt-get install {pkg})"));
        }
    }
    missing
}

/// Podman with the testbed's private configuration.
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// Writes the configuration and makes the image, once.
    pub fn setup() -> Result<Podman> {
        let missing = missing_prerequisites();
        if !missing.is_empty() {
            bail!("podman tests need: {}", missing.join("; "));
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pmoas-podman");
        std::fs::create_dir_all(&dir)?;
        let dir = dir.canonicalize()?;
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=16384:16384\", \"nproc=8192:8192\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{}\"\n",
                dir.join("events.log").display()
            ),
        )?;
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("storage").display(),
                dir.join("run").display()
            ),
        )?;
        let p = Podman { dir };
        if !p.run(&["image", "exists", IMAGE]).map(|o| o.status.success()).unwrap_or(false) {
            p.make_image()?;
        }
        Ok(p)
    }

    /// `podman` with this configuration.
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        c
    }

    fn run(&self, args: &[&str]) -> Result<std::process::Output> {
        self.command().args(args).output().with_context(|| format!("podman {}", args.join(" ")))
    }

    fn checked(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!("podman {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// busybox as an image: /bin/busybox and its applets, nothing else.
    fn make_image(&self) -> Result<()> {
        let root = self.dir.join("rootfs");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
        for applet in ["sh", "httpd", "wget", "sleep", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        std::fs::write(root.join("index.html"), "pmoas\n")?;
        let tar = self.dir.join("rootfs.tar");
        let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status()?;
        if !status.success() {
            bail!("tar of the busybox rootfs failed");
        }
        self.checked(&[
            "import",
            "--change",
            "ENV PATH=/bin",
            "--change",
            "CMD [\"/bin/sh\"]",
            tar.to_str().unwrap(),
            IMAGE,
        ])?;
        Ok(())
    }

    /// `podman kube play --network none` of `yaml`; the pod, removed with
    /// its cgroups when dropped.
    pub fn play(&self, name: &str, yaml: &str) -> Result<PlayedPod<'_>> {
        let file = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml)?;
        // A leftover of an earlier run would make play fail, and its cgroups
        // would be named as a pod by the next exporter.
        if let Ok(old) = self.pod_id(name) {
            let _ = self.run(&["pod", "rm", "-f", "-t", "0", name]);
            let _ = remove_pod_cgroups(&old);
        }
        // Which hierarchies lack the parent now: only those are ours to remove.
        let new_parents: Vec<PathBuf> =
            cgroup_mounts().into_iter().map(|m| m.join(CGROUP_PARENT)).filter(|p| !p.exists()).collect();
        self.checked(&["kube", "play", "--network", "none", file.to_str().unwrap()])?;
        let id = match self.pod_id(name) {
            Ok(id) => id,
            Err(e) => {
                let _ = self.run(&["pod", "rm", "-f", "-t", "0", name]);
                return Err(e);
            }
        };
        Ok(PlayedPod { podman: self, name: name.to_string(), id, new_parents, removed: false })
    }

    /// The full id of pod `name`, which names its cgroup
    /// (`libpod_parent/<id>` with the cgroupfs manager).
    fn pod_id(&self, name: &str) -> Result<String> {
        let id = self.checked(&["pod", "inspect", "--format", "{{.Id}}", name])?.trim().to_string();
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("podman pod inspect {name}: unexpected id {id:?}");
        }
        Ok(id)
    }

    /// Runs the Docker-compatible API on a unix socket until the returned
    /// guard is dropped.
    pub fn serve(&self) -> Result<ApiService> {
        let socket = self.dir.join("podman.sock");
        let _ = std::fs::remove_file(&socket);
        let child = self
            .command()
            .args(["system", "service", "--time=0", &format!("unix://{}", socket.display())])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("service.log"))?)
            .spawn()
            .context("starting podman system service")?;
        let svc = ApiService { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !svc.socket.exists() {
            if Instant::now() > deadline {
                bail!("podman system service did not create {}", svc.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(svc)
    }
}

/// The cgroup parent of pods with the cgroupfs manager, below the root of
/// every hierarchy.
pub const CGROUP_PARENT: &str = "libpod_parent";

/// Mount points of every cgroup hierarchy: cgroup2 and each v1 one (named
/// ones such as `name=systemd` included).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let fstype = right.split(' ').next().unwrap_or("");
        if let Some(mount) = left.split(' ').nth(4)
            && (fstype == "cgroup" || fstype == "cgroup2")
            && !mounts.iter().any(|m| m == Path::new(mount))
        {
            mounts.push(mount.into());
        }
    }
    mounts
}

/// The cgroup directories of pod `id` in every hierarchy, deepest first.
pub fn pod_cgroups(id: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut dirs = Vec::new();
    for mount in cgroup_mounts() {
        let top = mount.join(CGROUP_PARENT).join(id);
        if top.is_dir() {
            walk(&top, &mut dirs);
        }
    }
    dirs
}

/// Removes what Podman 4.3 leaves of pod `id` after `pod rm`: with the
/// cgroupfs manager on a hybrid host it removes the v1 controllers' cgroups
/// but not those in cgroup2 and `name=systemd`, and the next exporter would
/// name the empty `libpod_parent/<id>` as a pod.
fn remove_pod_cgroups(id: &str) -> Result<()> {
    // Never anything but one pod's own tree, whatever `id` is.
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("not a pod id: {id:?}");
    }
    let mut failed = Vec::new();
    // Children first: rmdir(2) removes only empty cgroups (and never
    // anything else), and cgroupfs has no other way to remove them.
    for dir in pod_cgroups(id) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                // conmon or a container's last process may still be exiting.
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    failed.push(format!("{}: {e}", dir.display()));
                    break;
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!("cgroups of pod {id} left behind: {}", failed.join("; "));
    }
    Ok(())
}

/// A pod started by `kube play`; removed, cgroups included, when dropped
/// (or by [`PlayedPod::remove`], which says what it could not remove).
pub struct PlayedPod<'a> {
    podman: &'a Podman,
    pub name: String,
    /// Podman's full pod id.
    pub id: String,
    /// `libpod_parent` directories that did not exist before this pod.
    new_parents: Vec<PathBuf>,
    removed: bool,
}

impl PlayedPod<'_> {
    /// Runs a command in one of its containers (`<pod>-<container>`).
    pub fn exec(&self, container: &str, args: &[&str]) -> Result<String> {
        let full = format!("{}-{container}", self.name);
        let mut all = vec!["exec", full.as_str()];
        all.extend_from_slice(args);
        self.podman.checked(&all)
    }

    /// Removes the pod, then its cgroups in every hierarchy.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.teardown()
    }

    fn teardown(&self) -> Result<()> {
        let rm = self.podman.checked(&["pod", "rm", "-f", "-t", "0", &self.name]);
        // Even when `pod rm` failed: whatever cgroups are empty go.
        let cgroups = remove_pod_cgroups(&self.id);
        for parent in &self.new_parents {
            // Fails, harmlessly, while another pod still uses it.
            let _ = std::fs::remove_dir(parent);
        }
        rm.map(|_| ()).and(cgroups)
    }
}

impl Drop for PlayedPod<'_> {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.teardown();
        }
    }
}

/// `podman system service`; stopped (by PID) when dropped.
pub struct ApiService {
    child: Child,
    pub socket: PathBuf,
}

impl Drop for ApiService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
