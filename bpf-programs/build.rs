//! Compiles every `src/*.bpf.c` with clang (`-target bpf`, CO-RE) into
//! `$OUT_DIR/<name>.bpf.o`, which `src/lib.rs` embeds.
//!
//! `BPF_CLANG` names the compiler (default `clang`), `BPF_CFLAGS` adds flags,
//! `BPF_STRIP` names llvm-strip (default `llvm-strip`; optional: it only drops
//! DWARF, the BTF that CO-RE needs stays).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const LIBBPF_HEADER: &str = "bpf/bpf_helpers.h";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let src = manifest.join("src");
    let include = manifest.join("include");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", include.display());
    for var in ["BPF_CLANG", "BPF_CFLAGS", "BPF_STRIP", "BPF_INCLUDE"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let arch = match env::var("CARGO_CFG_TARGET_ARCH").unwrap().as_str() {
        "x86_64" => "x86",
        other => fail(&format!(
            "pmoas ships vmlinux.h for x86_64 only, not for target arch `{other}`.\n\
             Generate one on a machine of that arch with\n  \
             bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf-programs/include/vmlinux.h"
        )),
    };

    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang".into());
    check_clang(&clang);
    let extra_include = env::var("BPF_INCLUDE").ok();
    check_libbpf_headers(extra_include.as_deref());

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
        .expect("read bpf-programs/src")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();

    for source in &sources {
        let stem = source.file_name().unwrap().to_string_lossy().replace(".bpf.c", "");
        let object = out.join(format!("{stem}.bpf.o"));
        let mut cmd = Command::new(&clang);
        cmd.args(["-target", "bpf", "-O2", "-g", "-mcpu=v3", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{arch}"))
            .arg("-I")
            .arg(&include);
        if let Some(dir) = &extra_include {
            cmd.arg("-I").arg(dir);
        }
        if let Ok(flags) = env::var("BPF_CFLAGS") {
            cmd.args(flags.split_whitespace());
        }
        cmd.arg("-c").arg(source).arg("-o").arg(&object);
        let output = cmd.output().unwrap_or_else(|e| fail(&format!("running {clang}: {e}")));
        if !output.status.success() {
            fail(&format!(
                "clang failed to compile {}:\n{}",
                source.display(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        strip_dwarf(&object);
    }
}

fn check_clang(clang: &str) {
    match Command::new(clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => fail(&format!(
            "pmoas compiles its eBPF programs with clang, and `{clang}` was not found or did not run.\n\
             Install it (Debian/Ubuntu: `apt-get install clang libbpf-dev`), or set BPF_CLANG to a clang binary."
        )),
    }
}

fn check_libbpf_headers(extra: Option<&str>) {
    let mut dirs = vec!["/usr/include", "/usr/local/include"];
    if let Some(dir) = extra {
        dirs.insert(0, dir);
    }
    if !dirs.iter().any(|d| Path::new(d).join(LIBBPF_HEADER).exists()) {
        fail(&format!(
            "libbpf's BPF headers ({LIBBPF_HEADER}) were not found in {dirs:?}.\n\
             Install them (Debian/Ubuntu: `apt-get install libbpf-dev`), or set BPF_INCLUDE to the directory that holds bpf/."
        ));
    }
}

fn strip_dwarf(object: &Path) {
    let strip = env::var("BPF_STRIP").unwrap_or_else(|_| "llvm-strip".into());
    // Optional: a missing llvm-strip only costs binary size.
    let _ = Command::new(strip).arg("-g").arg(object).status();
}

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: {msg}\n");
    panic!("pmoas-bpf build failed: {}", msg.lines().next().unwrap_or(msg));
}
