//! Records the git revision for `pmoas_build_info` and `version`:
//! PMOAS_REVISION from the environment wins, then `git rev-parse`, else
//! "unknown" (a source tarball).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PMOAS_REVISION");
    let revision = std::env::var("PMOAS_REVISION").ok().or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    if let Ok(head) = Command::new("git").args(["rev-parse", "--git-path", "HEAD"]).output() {
        let path = String::from_utf8_lossy(&head.stdout).trim().to_string();
        if !path.is_empty() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=PMOAS_REVISION={}", revision.unwrap_or_else(|| "unknown".into()));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=PMOAS_RUSTC={version}");
    println!("cargo:rustc-env=PMOAS_TARGET={}", std::env::var("TARGET").unwrap_or_default());
}
