//! The caller's span a trace joins: W3C Trace Context `traceparent`.
//!
//! A request that carries `traceparent: 00-<trace id>-<parent id>-<flags>`
//! was sent from a span of an instrumented caller. A collector that turns
//! the request into a [`Trace`](crate::Trace) sets its
//! [`remote_parent`](crate::Trace::remote_parent): the pipeline then gives
//! the trace's spans that trace id, and makes its root spans children of
//! that parent span, marked remote (OTLP span flag
//! `CONTEXT_IS_REMOTE`), so they show up inside the caller's trace.
//!
//! Parsing follows the W3C Trace Context recommendation (level 2, section
//! 3.2 and 4.3):
//! - version `00`: exactly 55 characters, `00-` 32 hex digits `-` 16 hex
//!   digits `-` 2 hex digits; hex digits are lowercase;
//! - version `ff` is invalid; a higher version is parsed as version 00 for
//!   its first 55 characters, which must then end the value or be followed
//!   by `-`;
//! - a trace id or parent id of only zeros is invalid;
//! - of the flags only bit 0, `sampled`, has a meaning; others are kept.
//!
//! Blanks around the value (HTTP's optional whitespace) are ignored. An
//! invalid value is refused with its [`TraceparentError`]: the caller
//! starts a new trace instead, and counts it (the http collector counts
//! `pmoas_http_traces_total{context="invalid_traceparent"}`).

/// A caller's span, from a valid W3C `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemoteParent {
    /// Not all zero.
    pub trace_id: [u8; 16],
    /// The caller's span: not all zero.
    pub span_id: [u8; 8],
    /// trace-flags; bit 0 is `sampled`.
    pub flags: u8,
}

/// Why a `traceparent` value is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TraceparentError {
    #[error("shorter than 55 characters, or longer for version 00")]
    Length,
    #[error("the version is not 2 lowercase hex digits, or is ff")]
    Version,
    #[error("fields not separated by `-` where version 00 has them")]
    Separator,
    #[error("the trace id is not 32 lowercase hex digits")]
    TraceId,
    #[error("the trace id is all zeros")]
    ZeroTraceId,
    #[error("the parent id is not 16 lowercase hex digits")]
    ParentId,
    #[error("the parent id is all zeros")]
    ZeroParentId,
    #[error("the trace flags are not 2 lowercase hex digits")]
    Flags,
}

/// Lowercase hex digits only, as the recommendation's HEXDIGLC.
fn hex(digits: &[u8], out: &mut [u8]) -> bool {
    if digits.len() != out.len() * 2 {
        return false;
    }
    let value = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        match (value(pair[0]), value(pair[1])) {
            (Some(hi), Some(lo)) => *o = hi << 4 | lo,
            _ => return false,
        }
    }
    true
}

impl RemoteParent {
    /// The value of a `traceparent` header.
    pub fn from_traceparent(value: &str) -> Result<RemoteParent, TraceparentError> {
        use TraceparentError as E;
        let b = value.trim_matches([' ', '\t']).as_bytes();
        if b.len() < 55 {
            return Err(E::Length);
        }
        let mut version = [0u8; 1];
        if !hex(&b[0..2], &mut version) || version[0] == 0xff {
            return Err(E::Version);
        }
        if version[0] == 0 && b.len() != 55 {
            return Err(E::Length);
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' || (b.len() > 55 && b[55] != b'-') {
            return Err(E::Separator);
        }
        let mut p = RemoteParent { trace_id: [0; 16], span_id: [0; 8], flags: 0 };
        if !hex(&b[3..35], &mut p.trace_id) {
            return Err(E::TraceId);
        }
        if !hex(&b[36..52], &mut p.span_id) {
            return Err(E::ParentId);
        }
        let mut flags = [0u8; 1];
        if !hex(&b[53..55], &mut flags) {
            return Err(E::Flags);
        }
        p.flags = flags[0];
        if p.trace_id == [0; 16] {
            return Err(E::ZeroTraceId);
        }
        if p.span_id == [0; 8] {
            return Err(E::ZeroParentId);
        }
        Ok(p)
    }

    /// The caller recorded its span (trace-flags bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The version 00 `traceparent` of this parent.
    pub fn to_traceparent(&self) -> String {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), self.flags)
    }

    /// The trace id as OTLP receivers and Jaeger print it (32 hex digits).
    pub fn trace_id_hex(&self) -> String {
        self.trace_id.iter().map(|x| format!("{x:02x}")).collect()
    }
}
