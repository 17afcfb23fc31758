//! Route patterns: the optional, bounded `route` label of the HTTP
//! duration histograms (`--collector.http.routes`).
//!
//! Paths are never labels by themselves: `/users/123` and `/users/124`
//! would each make a series, and any client chooses them. A user who wants
//! latency per endpoint names the endpoints as patterns; a request's path
//! is matched against them in order and the first that matches is its
//! `route` (the pattern as written). A path that matches none, or that
//! could not be decoded (HTTP/2 with an unknown HPACK entry), is counted
//! under [`OTHER`]. The series are thus at most the patterns plus one, per
//! container, side, method and status.
//!
//! # Pattern syntax
//! A pattern is an absolute path of `/`-separated segments:
//! - a literal segment matches itself (case-sensitive);
//! - `{name}` or `:name` matches any one non-empty segment;
//! - `*` as the last segment matches the rest of the path, including
//!   nothing (`/static/*` matches `/static`, `/static/` and `/static/a/b`).
//!
//! The query string is not part of the path (`protocols` cuts it); a
//! trailing slash is a segment of its own (`/a/` is not `/a`).

/// The label value of a path no pattern matches.
pub const OTHER: &str = "_OTHER";
/// Patterns accepted at most: each is a label value.
pub const MAX_ROUTES: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// Any one non-empty segment.
    Param,
    /// The rest of the path (last segment only).
    Rest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

/// The configured patterns, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    patterns: Vec<Pattern>,
}

/// A route: the index of the pattern that matched, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route(Option<u16>);

impl Routes {
    /// Parses the patterns; the error names the first bad one and why.
    pub fn new(patterns: &[String]) -> Result<Routes, String> {
        if patterns.len() > MAX_ROUTES {
            return Err(format!("{} route patterns, at most {MAX_ROUTES} are allowed", patterns.len()));
        }
        let mut parsed: Vec<Pattern> = Vec::with_capacity(patterns.len());
        for text in patterns {
            let p = parse(text).map_err(|why| format!("route pattern `{text}`: {why}"))?;
            if parsed.iter().any(|q| q.text == p.text) {
                return Err(format!("route pattern `{text}` is given twice"));
            }
            parsed.push(p);
        }
        Ok(Routes { patterns: parsed })
    }

    /// Whether any pattern is configured (else there is no `route` label).
    pub fn is_enabled(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// The route of a request path (None: not decoded).
    pub fn route(&self, path: Option<&str>) -> Route {
        let Some(path) = path else { return Route(None) };
        Route(self.patterns.iter().position(|p| matches(&p.segments, path)).map(|i| i as u16))
    }

    /// The label value of a route.
    pub fn label(&self, route: Route) -> &str {
        route.0.and_then(|i| self.patterns.get(usize::from(i))).map_or(OTHER, |p| p.text.as_str())
    }
}

fn parse(text: &str) -> Result<Pattern, String> {
    let Some(rest) = text.strip_prefix('/') else { return Err("must start with `/`".into()) };
    if text.chars().any(|c| c.is_whitespace() || c == '?' || c == '#') {
        return Err("may not hold whitespace, `?` or `#` (the query is not part of the path)".into());
    }
    let raw: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let last = i + 1 == raw.len();
        let seg = if *s == "*" {
            if !last {
                return Err("`*` may only be the last segment".into());
            }
            Segment::Rest
        } else if let Some(name) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            if name.is_empty() || name.contains(['{', '}']) {
                return Err(format!("`{s}` is not a parameter like {{id}}"));
            }
            Segment::Param
        } else if let Some(name) = s.strip_prefix(':') {
            if name.is_empty() {
                return Err("`:` needs a name, like :id".into());
            }
            Segment::Param
        } else if s.contains(['{', '}', '*']) {
            return Err(format!("`{s}`: `{{name}}` and `*` must be whole segments"));
        } else {
            Segment::Literal(s.to_string())
        };
        segments.push(seg);
    }
    Ok(Pattern { text: text.to_string(), segments })
}

fn matches(pattern: &[Segment], path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    let mut parts = rest.split('/');
    for seg in pattern {
        match seg {
            Segment::Rest => return true,
            Segment::Param => match parts.next() {
                Some(p) if !p.is_empty() => {}
                _ => return false,
            },
            Segment::Literal(l) => match parts.next() {
                Some(p) if p == l => {}
                _ => return false,
            },
        }
    }
    parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(p: &[&str]) -> Routes {
        Routes::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn label<'a>(r: &'a Routes, path: &str) -> &'a str {
        r.label(r.route(Some(path)))
    }

    #[test]
    fn first_matching_pattern_names_the_route() {
        let r = routes(&["/users/me", "/users/{id}", "/users/:id/orders", "/static/*", "/"]);
        assert_eq!(label(&r, "/users/me"), "/users/me");
        assert_eq!(label(&r, "/users/42"), "/users/{id}");
        assert_eq!(label(&r, "/users/42/orders"), "/users/:id/orders");
        assert_eq!(label(&r, "/static"), "/static/*");
        assert_eq!(label(&r, "/static/css/a.css"), "/static/*");
        assert_eq!(label(&r, "/"), "/");
        // A parameter is one non-empty segment; literals are exact.
        assert_eq!(label(&r, "/users/"), OTHER);
        assert_eq!(label(&r, "/users/42/orders/7"), OTHER);
        assert_eq!(label(&r, "/Users/me"), OTHER);
        assert_eq!(label(&r, "/users/me/"), OTHER);
        assert_eq!(label(&r, "users/me"), OTHER);
        assert_eq!(r.label(r.route(None)), OTHER, "an undecoded path");
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        let err = |p: &[&str]| Routes::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err();
        assert!(err(&["users"]).contains("must start with `/`"));
        assert!(err(&["/a/*/b"]).contains("last segment"));
        assert!(err(&["/a/{}"]).contains("not a parameter"));
        assert!(err(&["/a/x{id}"]).contains("whole segments"));
        assert!(err(&["/a?b=1"]).contains("query"));
        assert!(err(&["/a", "/a"]).contains("twice"));
        let many: Vec<String> = (0..=MAX_ROUTES).map(|i| format!("/r{i}")).collect();
        assert!(Routes::new(&many).unwrap_err().contains("at most 256"));
    }

    #[test]
    fn no_patterns_no_label() {
        let r = routes(&[]);
        assert!(!r.is_enabled());
        assert_eq!(label(&r, "/anything"), OTHER);
    }
}
