//! gRPC over HTTP/2: the call's service and method from `:path`
//! (`/package.Service/Method`) and its status code, named as the gRPC spec
//! names them (`OK`, `CANCELLED`, ..., `UNAUTHENTICATED`).
//!
//! Where the code comes from ([`GrpcCodeSource`]), in the order a client
//! would take it:
//! - `grpc-status` of the trailers (HEADERS with END_STREAM after the
//!   response headers), or of a Trailers-Only response (the one response
//!   HEADERS frame, with END_STREAM);
//! - no `grpc-status` at all in a complete response: the code the gRPC spec
//!   tells a client to synthesise from the HTTP status
//!   (doc/http-grpc-status-mapping.md: 400 INTERNAL, 401 UNAUTHENTICATED,
//!   403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE,
//!   every other status, 200 included, UNKNOWN);
//! - the stream reset before the response completed: the code the spec maps
//!   the RST_STREAM error code to (doc/PROTOCOL-HTTP2.md, "Errors": CANCEL
//!   CANCELLED, REFUSED_STREAM UNAVAILABLE, ENHANCE_YOUR_CALM
//!   RESOURCE_EXHAUSTED, INADEQUATE_SECURITY PERMISSION_DENIED, every other
//!   one INTERNAL).
//!
//! A `grpc-status` that is present but cannot be decoded (an HPACK entry we
//! do not know) is never replaced by one of those: the exchange is not
//! returned (`h2_hpack_unknown_index`). A `grpc-status` outside 0..=16 is
//! UNKNOWN, as the spec says of codes a client does not know.

/// A gRPC status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

const CODES: [GrpcCode; 17] = [
    GrpcCode::Ok,
    GrpcCode::Cancelled,
    GrpcCode::Unknown,
    GrpcCode::InvalidArgument,
    GrpcCode::DeadlineExceeded,
    GrpcCode::NotFound,
    GrpcCode::AlreadyExists,
    GrpcCode::PermissionDenied,
    GrpcCode::ResourceExhausted,
    GrpcCode::FailedPrecondition,
    GrpcCode::Aborted,
    GrpcCode::OutOfRange,
    GrpcCode::Unimplemented,
    GrpcCode::Internal,
    GrpcCode::Unavailable,
    GrpcCode::DataLoss,
    GrpcCode::Unauthenticated,
];

impl GrpcCode {
    /// From its number; None outside 0..=16.
    pub fn from_u32(n: u32) -> Option<GrpcCode> {
        CODES.get(n as usize).copied()
    }

    /// From a `grpc-status` value: a decimal number; codes outside 0..=16
    /// are UNKNOWN; None when it is not a number at all.
    pub fn from_header(value: &[u8]) -> Option<GrpcCode> {
        if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
        Some(u32::try_from(n).ok().and_then(GrpcCode::from_u32).unwrap_or(GrpcCode::Unknown))
    }

    /// The `grpc_code` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code a client synthesises from the HTTP status of a response
    /// without `grpc-status` (http-grpc-status-mapping.md).
    pub fn from_http_status(status: u16) -> GrpcCode {
        match status {
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502 | 503 | 504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }

    /// The code a client reports for a stream reset with this HTTP/2 error
    /// code (PROTOCOL-HTTP2.md, "Errors").
    pub fn from_rst_stream(error_code: u32) -> GrpcCode {
        match error_code {
            0x7 => GrpcCode::Unavailable,       // REFUSED_STREAM
            0x8 => GrpcCode::Cancelled,         // CANCEL
            0xb => GrpcCode::ResourceExhausted, // ENHANCE_YOUR_CALM
            0xc => GrpcCode::PermissionDenied,  // INADEQUATE_SECURITY
            _ => GrpcCode::Internal,
        }
    }
}

/// Where a call's code was taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrpcCodeSource {
    /// `grpc-status` in the trailers.
    Trailers,
    /// `grpc-status` in a Trailers-Only response.
    TrailersOnly,
    /// No `grpc-status`: mapped from the HTTP status.
    HttpStatus,
    /// The stream was reset: mapped from the RST_STREAM error code.
    Reset,
}

/// A gRPC call's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCall {
    /// `package.Service`, cut to `max_value` bytes.
    pub service: String,
    /// `Method`, cut to `max_value` bytes.
    pub method: String,
    pub code: GrpcCode,
    pub code_source: GrpcCodeSource,
}

/// `/package.Service/Method` -> (service, method); None for any other
/// shape.
pub fn split_path(path: &[u8]) -> Option<(&str, &str)> {
    let s = std::str::from_utf8(path).ok()?;
    let rest = s.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') || method.contains('?') {
        return None;
    }
    Some((service, method))
}

/// Is this a gRPC content type (`application/grpc`, `application/grpc+proto`,
/// `application/grpc-web...`)?
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    let v = value.get(..16).unwrap_or(value);
    v.eq_ignore_ascii_case(b"application/grpc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        let names: Vec<_> = (0..17).map(|n| GrpcCode::from_u32(n).unwrap().as_str()).collect();
        assert_eq!(names[0], "OK");
        assert_eq!(names[1], "CANCELLED");
        assert_eq!(names[4], "DEADLINE_EXCEEDED");
        assert_eq!(names[14], "UNAVAILABLE");
        assert_eq!(names[16], "UNAUTHENTICATED");
        assert_eq!(GrpcCode::from_u32(17), None);
        for n in 0..17u32 {
            assert_eq!(GrpcCode::from_u32(n).unwrap() as u32, n);
        }
    }

    #[test]
    fn status_headers() {
        assert_eq!(GrpcCode::from_header(b"0"), Some(GrpcCode::Ok));
        assert_eq!(GrpcCode::from_header(b"14"), Some(GrpcCode::Unavailable));
        assert_eq!(GrpcCode::from_header(b"99"), Some(GrpcCode::Unknown));
        assert_eq!(GrpcCode::from_header(b"99999999999"), None);
        assert_eq!(GrpcCode::from_header(b""), None);
        assert_eq!(GrpcCode::from_header(b"x"), None);
    }

    #[test]
    fn paths() {
        assert_eq!(split_path(b"/helloworld.Greeter/SayHello"), Some(("helloworld.Greeter", "SayHello")));
        assert_eq!(split_path(b"/a/b/c"), None);
        assert_eq!(split_path(b"/a"), None);
        assert_eq!(split_path(b"a/b"), None);
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(!is_grpc_content_type(b"application/json"));
    }

    #[test]
    fn mappings() {
        assert_eq!(GrpcCode::from_http_status(503), GrpcCode::Unavailable);
        assert_eq!(GrpcCode::from_http_status(200), GrpcCode::Unknown);
        assert_eq!(GrpcCode::from_rst_stream(8), GrpcCode::Cancelled);
        assert_eq!(GrpcCode::from_rst_stream(2), GrpcCode::Internal);
    }
}
