//! The C/Rust contract, checked rather than trusted: every struct that Rust
//! mirrors ([`pmoas_bpf::types::LAYOUTS`] and each collector's own table,
//! e.g. [`pmoas_bpf::netstack::LAYOUTS`])
//! must have, in the BTF of the compiled objects, the same size, the same
//! fields in the same order and every field at the same offset.
//!
//! The BTF is read with `bpftool btf dump file OBJ format raw` (Debian's
//! bpftool, installed by scripts/install-deps.sh test).

use std::collections::BTreeMap;
use std::process::Command;

use pmoas_bpf::types::Layout;

/// C struct name -> (size, [(field, byte offset)]).
type Structs = BTreeMap<String, (usize, Vec<(String, usize)>)>;

fn btf_structs(name: &str, object: &[u8]) -> Structs {
    let path = std::env::temp_dir().join(format!("pmoas-contract-{}-{name}.bpf.o", std::process::id()));
    std::fs::write(&path, object).unwrap();
    let out = Command::new("bpftool").args(["btf", "dump", "file"]).arg(&path).args(["format", "raw"]).output();
    let _ = std::fs::remove_file(&path);
    let out = out.expect("bpftool not found: apt-get install bpftool (scripts/install-deps.sh test does)");
    assert!(out.status.success(), "bpftool on {name}: {}", String::from_utf8_lossy(&out.stderr));
    parse_raw(&String::from_utf8_lossy(&out.stdout))
}

/// `[5] STRUCT 'x' size=24 vlen=2` followed by `\t'f' type_id=6 bits_offset=0` lines.
fn parse_raw(text: &str) -> Structs {
    let mut out = Structs::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('[') {
            current = None;
            let mut words = line.split_whitespace().skip(1);
            if words.next() == Some("STRUCT") {
                let name = words.next().unwrap_or("").trim_matches('\'').to_string();
                let size = words
                    .find_map(|w| w.strip_prefix("size="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no size in {line}"));
                out.insert(name.clone(), (size, Vec::new()));
                current = Some(name);
            }
        } else if let Some(name) = &current {
            let field = line.split_whitespace().next().unwrap_or("").trim_matches('\'').to_string();
            let bits: usize = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bits_offset="))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no bits_offset in {line}"));
            out.get_mut(name).unwrap().1.push((field, bits / 8));
        }
    }
    out
}

fn check(layouts: &[Layout], objects: &[(&str, &[u8])]) {
    let dumps: Vec<(&str, Structs)> = objects.iter().map(|(n, o)| (*n, btf_structs(n, o))).collect();
    for layout in layouts {
        let mut seen = 0;
        for (object, structs) in &dumps {
            let Some((size, fields)) = structs.get(layout.c_name) else { continue };
            seen += 1;
            assert_eq!(*size, layout.size, "struct {} in {object}: C size {size}, Rust {}", layout.c_name, layout.size);
            let rust: Vec<(String, usize)> = layout.fields.iter().map(|(f, o)| (f.to_string(), *o)).collect();
            assert_eq!(fields, &rust, "struct {} in {object}: C fields/offsets vs Rust", layout.c_name);
        }
        assert!(seen > 0, "struct {} is mirrored in Rust but no object uses it (stale mirror?)", layout.c_name);
    }
}

/// Every object, by name.
const OBJECTS: &[(&str, &[u8])] = &[
    ("socket", pmoas_bpf::SOCKET),
    ("cgroup", pmoas_bpf::CGROUP),
    ("netstack", pmoas_bpf::NETSTACK),
    ("http", pmoas_bpf::HTTP),
    ("sockops", pmoas_bpf::SOCKOPS),
];

#[test]
fn every_mirrored_struct_matches_the_objects_btf() {
    check(pmoas_bpf::types::LAYOUTS, OBJECTS);
}

#[test]
fn every_collectors_own_structs_match_its_object() {
    check(pmoas_bpf::netstack::LAYOUTS, &[("netstack", pmoas_bpf::NETSTACK)]);
    check(pmoas_bpf::http::LAYOUTS, &[("http", pmoas_bpf::HTTP)]);
    check(pmoas_bpf::sockops::LAYOUTS, &[("sockops", pmoas_bpf::SOCKOPS)]);
}

#[test]
fn a_moved_field_is_caught() {
    let structs = btf_structs("socket", pmoas_bpf::SOCKET);
    let (size, fields) = &structs["pmoas_socket_key"];
    assert_eq!(*size, 24);
    // The parser reads what bpftool prints; a Rust table with one offset
    // off must not equal it.
    let wrong: Vec<(String, usize)> =
        fields.iter().map(|(f, o)| (f.clone(), if f == "peer_class" { o + 1 } else { *o })).collect();
    assert_ne!(fields, &wrong);
    assert_eq!(fields.iter().find(|(f, _)| f == "peer_class").map(|(_, o)| *o), Some(16));
}
