//! The kernel side of pmoas: eBPF programs written in C with CO-RE
//! (`src/*.bpf.c`, shared headers in `include/`), compiled by `build.rs` with
//! clang and embedded here as ELF objects that Aya loads.
//!
//! | collector | C source            | object          |
//! |-----------|---------------------|-----------------|
//! | socket    | `src/socket.bpf.c`  | [`SOCKET`]      |
//! | cgroup    | `src/cgroup.bpf.c`  | [`CGROUP`]      |
//! | netstack  | `src/netstack.bpf.c`| [`NETSTACK`]    |
//! | http      | `src/http.bpf.c`    | [`HTTP`]        |
//! | sockops   | `src/sockops.bpf.c` | [`SOCKOPS`]     |
//!
//! [`types`] mirrors the structs of `include/pmoas_types.h` that cross the
//! kernel/user boundary.

pub mod http;
pub mod netstack;
pub mod sockops;
pub mod types;

/// The socket collector's programs and maps (`src/socket.bpf.c`).
pub static SOCKET: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socket.bpf.o"));

/// The cgroup collector's programs and maps (`src/cgroup.bpf.c`).
pub static CGROUP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgroup.bpf.o"));

/// The netstack collector's programs and maps (`src/netstack.bpf.c`).
pub static NETSTACK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netstack.bpf.o"));

/// The http collector's programs and maps (`src/http.bpf.c`).
pub static HTTP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/http.bpf.o"));

/// The sockops collector's programs and maps (`src/sockops.bpf.c`):
/// socket-redirect acceleration, opt-in.
pub static SOCKOPS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockops.bpf.o"));
