//! One compiled HTTPRoute match: path, method, headers and query parameters.

use std::cmp::Reverse;

use portcullis_api::config::{PathMatch, RouteMatch, StringMatch};
use portcullis_api::validate::{MAX_REGEX_COMPILED_BYTES, full_match_pattern};
use regex::bytes::{Regex, RegexBuilder};

use crate::http::HeaderSpan;

/// The parts of a request that routing looks at.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub query: Option<&'a [u8]>,
    /// The buffer `headers` index into.
    pub buf: &'a [u8],
    pub headers: &'a [HeaderSpan],
}

impl<'a> RequestView<'a> {
    /// First value of a header; `name` compares ASCII case-insensitively.
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        let buf = self.buf;
        self.headers
            .iter()
            .find(|h| buf[h.name.clone()].eq_ignore_ascii_case(name))
            .map(|h| &buf[h.value.clone()])
    }

    /// Value of the first query parameter named exactly `name` ("a" in "?a=1&a=2" is "1").
    pub fn query_param(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.query?.split(|&b| b == b'&').find_map(|pair| {
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &pair[pair.len()..]),
            };
            (key == name).then_some(value)
        })
    }
}

#[derive(Debug)]
pub enum PathMatcher {
    Exact(Box<[u8]>),
    /// Stored without a trailing slash ("/" becomes empty) so "/foo" and "/foo/" share a key.
    Prefix {
        key: Box<[u8]>,
        declared_len: usize,
    },
    Regex(Regex),
    /// `/<any service>/<method>`; `suffix` is `/<method>`.
    GrpcMethod {
        suffix: Box<[u8]>,
    },
}

#[derive(Debug)]
pub enum ValueMatcher {
    Exact(Box<[u8]>),
    Regex(Regex),
}

impl ValueMatcher {
    fn compile(m: &StringMatch) -> Result<Self, regex::Error> {
        Ok(match m {
            StringMatch::Exact(v) => ValueMatcher::Exact(v.as_bytes().into()),
            StringMatch::RegularExpression(r) => ValueMatcher::Regex(full_match_regex(r)?),
        })
    }

    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatcher::Exact(expected) => **expected == *value,
            ValueMatcher::Regex(regex) => regex.is_match(value),
        }
    }
}

/// Regular expressions match the whole value, as Envoy-based implementations do; an
/// unanchored pattern would let "/admin" match "/public/admin".
fn full_match_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&full_match_pattern(pattern))
        .size_limit(MAX_REGEX_COMPILED_BYTES)
        .build()
}

#[derive(Debug)]
pub struct CompiledMatch {
    pub path: PathMatcher,
    pub method: Option<Box<[u8]>>,
    pub headers: Vec<(Box<[u8]>, ValueMatcher)>,
    pub query_params: Vec<(Box<[u8]>, ValueMatcher)>,
}

impl CompiledMatch {
    pub fn compile(m: &RouteMatch) -> Result<Self, regex::Error> {
        let path = match &m.path {
            PathMatch::Exact(p) => PathMatcher::Exact(p.as_bytes().into()),
            PathMatch::PathPrefix(p) => PathMatcher::Prefix {
                key: prefix_key(p.as_bytes()).into(),
                declared_len: p.len(),
            },
            PathMatch::RegularExpression(r) => PathMatcher::Regex(full_match_regex(r)?),
            PathMatch::GrpcMethod(method) => PathMatcher::GrpcMethod {
                suffix: format!("/{method}").into_bytes().into(),
            },
        };
        // Gateway API: when a match lists the same header or parameter twice, only the
        // first counts.
        let mut headers: Vec<(Box<[u8]>, ValueMatcher)> = Vec::new();
        for h in &m.headers {
            let name = h.name.to_ascii_lowercase().into_bytes().into_boxed_slice();
            if !headers.iter().any(|(existing, _)| *existing == name) {
                headers.push((name, ValueMatcher::compile(&h.value)?));
            }
        }
        let mut query_params: Vec<(Box<[u8]>, ValueMatcher)> = Vec::new();
        for q in &m.query_params {
            let name: Box<[u8]> = q.name.as_bytes().into();
            if !query_params.iter().any(|(existing, _)| *existing == name) {
                query_params.push((name, ValueMatcher::compile(&q.value)?));
            }
        }
        Ok(Self {
            path,
            method: m.method.as_ref().map(|s| s.as_bytes().into()),
            headers,
            query_params,
        })
    }

    /// The default match of a rule without matches: every path.
    pub fn catch_all() -> Self {
        Self {
            path: PathMatcher::Prefix {
                key: Box::default(),
                declared_len: 1,
            },
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        }
    }

    /// Everything but the path, which the index has already matched.
    pub fn matches_conditions(&self, request: &RequestView<'_>) -> bool {
        if let Some(method) = &self.method
            && **method != *request.method
        {
            return false;
        }
        self.headers.iter().all(|(name, value)| {
            request
                .header(name)
                .is_some_and(|actual| value.matches(actual))
        }) && self.query_params.iter().all(|(name, value)| {
            request
                .query_param(name)
                .is_some_and(|actual| value.matches(actual))
        })
    }

    /// Full check including the path (used by tests and the regex list).
    pub fn matches(&self, request: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatcher::Exact(p) => **p == *request.path,
            PathMatcher::Prefix { key, .. } => prefix_matches(key, request.path),
            PathMatcher::Regex(r) => r.is_match(request.path),
            PathMatcher::GrpcMethod { suffix } => grpc_method_of(request.path) == Some(suffix),
        };
        path_ok && self.matches_conditions(request)
    }

    /// Sort key within one path bucket, by Gateway API precedence after the path: a method
    /// match first, then more header matches, then more query matches. Ties keep route and
    /// rule order (the sort is stable).
    pub fn precedence(&self) -> (Reverse<usize>, bool, Reverse<usize>, Reverse<usize>) {
        let declared_len = match &self.path {
            PathMatcher::Prefix { declared_len, .. } => *declared_len,
            _ => 0,
        };
        (
            Reverse(declared_len),
            self.method.is_none(),
            Reverse(self.headers.len()),
            Reverse(self.query_params.len()),
        )
    }

    /// The number of request-path bytes a PathPrefix match consumed (for ReplacePrefixMatch).
    pub fn matched_prefix_len(&self) -> usize {
        match &self.path {
            PathMatcher::Prefix { key, .. } => key.len(),
            _ => 0,
        }
    }
}

/// `/<method>` of a `/<service>/<method>` path (both elements non-empty), or None.
pub fn grpc_method_of(path: &[u8]) -> Option<&[u8]> {
    let rest = path.strip_prefix(b"/")?;
    let service_len = rest.iter().position(|&b| b == b'/')?;
    let suffix = &rest[service_len..];
    (service_len > 0 && suffix.len() > 1 && !suffix[1..].contains(&b'/')).then_some(suffix)
}

/// "/foo/" → "/foo", "/" → "".
pub fn prefix_key(prefix: &[u8]) -> &[u8] {
    let mut key = prefix;
    while let Some(stripped) = key.strip_suffix(b"/") {
        key = stripped;
    }
    key
}

/// Element-wise prefix match: key "/foo" matches "/foo" and "/foo/…", not "/foobar".
pub fn prefix_matches(key: &[u8], path: &[u8]) -> bool {
    path.starts_with(key) && (path.len() == key.len() || path[key.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{HeadLimits, RequestHead, parse};

    fn with_view<R>(raw: &[u8], f: impl FnOnce(RequestView<'_>) -> R) -> R {
        let mut head = RequestHead::default();
        let limits = HeadLimits {
            max_header_count: 100,
            max_header_bytes: 65536,
            max_request_line_bytes: 8192,
        };
        assert!(parse(raw, &limits, &mut head).unwrap());
        f(RequestView {
            method: head.method(raw),
            path: head.path(raw),
            query: head.query(raw),
            buf: raw,
            headers: &head.headers,
        })
    }

    fn compile(json: &str) -> CompiledMatch {
        CompiledMatch::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn prefixes_are_element_wise() {
        assert!(prefix_matches(b"/foo", b"/foo"));
        assert!(prefix_matches(b"/foo", b"/foo/"));
        assert!(prefix_matches(b"/foo", b"/foo/bar"));
        assert!(!prefix_matches(b"/foo", b"/foobar"));
        assert!(prefix_matches(b"", b"/anything"));
        assert_eq!(prefix_key(b"/foo/"), b"/foo");
        assert_eq!(prefix_key(b"/"), b"");
    }

    #[test]
    fn conditions() {
        let m = compile(
            r#"{"path":{"type":"PathPrefix","value":"/v1/"},"method":"POST",
                "headers":[{"name":"X-Env","value":{"type":"Exact","value":"canary"}},
                           {"name":"x-env","value":{"type":"Exact","value":"ignored"}}],
                "query_params":[{"name":"tier","value":{"type":"RegularExpression","value":"gold|silver"}}]}"#,
        );
        let ok = b"POST /v1/items?x=1&tier=gold HTTP/1.1\r\nHost: a\r\nx-env: canary\r\n\r\n";
        assert!(with_view(ok, |v| m.matches(&v)));
        let cases: &[&[u8]] = &[
            b"GET /v1/items?tier=gold HTTP/1.1\r\nHost: a\r\nx-env: canary\r\n\r\n",
            b"POST /v2/items?tier=gold HTTP/1.1\r\nHost: a\r\nx-env: canary\r\n\r\n",
            b"POST /v1/items?tier=bronze HTTP/1.1\r\nHost: a\r\nx-env: canary\r\n\r\n",
            b"POST /v1/items?tier=goldx HTTP/1.1\r\nHost: a\r\nx-env: canary\r\n\r\n",
            b"POST /v1/items?tier=gold HTTP/1.1\r\nHost: a\r\nx-env: Canary\r\n\r\n",
            b"POST /v1/items HTTP/1.1\r\nHost: a\r\nx-env: canary\r\n\r\n",
            b"POST /v1/items?tier=gold HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for raw in cases {
            assert!(
                !with_view(raw, |v| m.matches(&v)),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn regex_paths_match_whole_paths() {
        let m = compile(r#"{"path":{"type":"RegularExpression","value":"/api/v[0-9]+"}}"#);
        assert!(with_view(b"GET /api/v2 HTTP/1.1\r\nHost: a\r\n\r\n", |v| m
            .matches(&v)));
        assert!(!with_view(
            b"GET /x/api/v2 HTTP/1.1\r\nHost: a\r\n\r\n",
            |v| m.matches(&v)
        ));
        assert!(!with_view(
            b"GET /api/v2/x HTTP/1.1\r\nHost: a\r\n\r\n",
            |v| m.matches(&v)
        ));
    }

    #[test]
    fn query_params() {
        with_view(b"GET /?a=1&b&a=2&c=x=y HTTP/1.1\r\nHost: h\r\n\r\n", |v| {
            assert_eq!(v.query_param(b"a"), Some(&b"1"[..]));
            assert_eq!(v.query_param(b"b"), Some(&b""[..]));
            assert_eq!(v.query_param(b"c"), Some(&b"x=y"[..]));
            assert_eq!(v.query_param(b"A"), None);
        });
    }
}
