//! The names of `enum skb_drop_reason` as the running kernel numbers them,
//! read from its BTF (`/sys/kernel/btf/vmlinux`). The numbers change from
//! one kernel to the next (reasons are inserted in the middle), so they are
//! never compiled in. aya-obj parses BTF but keeps enum members private; the
//! format is small enough to walk here (Documentation/bpf/btf.rst).

use std::collections::HashMap;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_ENUM: u32 = 6;
const KIND_ENUM64: u32 = 19;

/// `SKB_DROP_REASON_` is taken off, so a reason reads `NETFILTER_DROP`.
pub const PREFIX: &str = "SKB_DROP_REASON_";

/// The members of the enum named `enum_name`: value -> name with `strip`
/// taken off the front.
pub fn enum_members(btf: &[u8], enum_name: &str, strip: &str) -> Result<HashMap<u32, String>, String> {
    let u16_at = |o: usize| btf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| btf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if u16_at(0) != Some(BTF_MAGIC) {
        return Err("not little-endian BTF (bad magic)".into());
    }
    let hdr_len = u32_at(4).ok_or("short header")? as usize;
    let type_off = u32_at(8).ok_or("short header")? as usize;
    let type_len = u32_at(12).ok_or("short header")? as usize;
    let str_off = u32_at(16).ok_or("short header")? as usize;
    let str_len = u32_at(20).ok_or("short header")? as usize;
    let types = hdr_len + type_off;
    let strings = btf.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or("string section out of bounds")?;
    let name_at = |off: u32| -> &str {
        let s = strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    };

    let mut pos = types;
    let end = types + type_len;
    while pos + 12 <= end {
        let name_off = u32_at(pos).ok_or("truncated type")?;
        let info = u32_at(pos + 4).ok_or("truncated type")?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let body = pos + 12;
        let extra = match kind {
            1 | 14 | 17 => 4,          // INT, VAR, DECL_TAG
            3 => 12,                   // ARRAY
            4 | 5 | 15 => vlen * 12,   // STRUCT, UNION, DATASEC
            6 | 13 => vlen * 8,        // ENUM, FUNC_PROTO
            19 => vlen * 12,           // ENUM64
            2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
            other => return Err(format!("unknown BTF kind {other}")),
        };
        if (kind == KIND_ENUM || kind == KIND_ENUM64) && name_at(name_off) == enum_name {
            let step = if kind == KIND_ENUM { 8 } else { 12 };
            let mut out = HashMap::with_capacity(vlen);
            for i in 0..vlen {
                let m = body + i * step;
                let name = name_at(u32_at(m).ok_or("truncated enum")?);
                let value = u32_at(m + 4).ok_or("truncated enum")?;
                out.insert(value, name.strip_prefix(strip).unwrap_or(name).to_string());
            }
            return Ok(out);
        }
        pos = body + extra;
    }
    Err(format!("enum {enum_name} not found"))
}

/// The drop reasons of the running kernel.
pub fn drop_reasons() -> Result<HashMap<u32, String>, String> {
    let path = "/sys/kernel/btf/vmlinux";
    let btf = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    enum_members(&btf, "skb_drop_reason", PREFIX).map_err(|e| format!("{path}: {e}"))
}

/// The label of a reason number: its name, or `UNKNOWN_<n>`.
pub fn reason_label(names: &HashMap<u32, String>, reason: u32) -> String {
    names.get(&reason).cloned().unwrap_or_else(|| format!("UNKNOWN_{reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with an INT, a STRUCT of one member and the enum.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0f\0skb_drop_reason\0SKB_NOT_DROPPED_YET\0SKB_DROP_REASON_NETFILTER_DROP\0";
        let off = |s: &str| {
            let needle = format!("\0{s}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // [1] INT 'int' size 4
        push(off("int"));
        push(1 << 24);
        push(4);
        push(32);
        // [2] STRUCT 's' one member 'f'
        push(off("s"));
        push((4 << 24) | 1);
        push(4);
        push(off("f"));
        push(1);
        push(0);
        // [3] ENUM 'skb_drop_reason' two members
        push(off("skb_drop_reason"));
        push((6 << 24) | 2);
        push(4);
        push(off("SKB_NOT_DROPPED_YET"));
        push(0);
        push(off("SKB_DROP_REASON_NETFILTER_DROP"));
        push(12);
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        for v in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_the_enum_after_other_kinds() {
        let names = enum_members(&blob(), "skb_drop_reason", PREFIX).unwrap();
        assert_eq!(names.get(&12).map(String::as_str), Some("NETFILTER_DROP"));
        assert_eq!(names.get(&0).map(String::as_str), Some("SKB_NOT_DROPPED_YET"), "no prefix: kept whole");
        assert_eq!(reason_label(&names, 999), "UNKNOWN_999");
        assert!(enum_members(&blob(), "nosuch", PREFIX).is_err());
        assert!(enum_members(b"junk", "skb_drop_reason", PREFIX).is_err());
    }

    #[test]
    fn the_running_kernel_names_netfilter_drop() {
        // Every kernel with BTF and drop reasons (5.17+) has it; elsewhere
        // (no /sys/kernel/btf) there is nothing to check.
        let Ok(names) = drop_reasons() else { return };
        assert!(names.values().any(|n| n == "NETFILTER_DROP"), "{names:?}");
        assert!(names.values().any(|n| n == "NOT_SPECIFIED"), "{names:?}");
    }
}
