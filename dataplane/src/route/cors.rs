//! The CORS filter of a rule, compiled once per config, and the headers it writes.
//!
//! A preflight (OPTIONS with `Origin` and `Access-Control-Request-Method`) is answered by the
//! proxy and never reaches the backend. Other requests are forwarded untouched; when their
//! origin is allowed, the response gets `Access-Control-Allow-Origin` (and credentials and
//! exposed headers), replacing any the backend sent. Where the configuration says `*` but
//! credentials are allowed, browsers ignore a literal `*`, so the request's own origin,
//! method or header list is echoed instead.

use std::io::Write as _;

use portcullis_api::config::Cors;
use portcullis_api::cors::OriginPattern;

/// What a list of methods or headers allows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowance {
    /// Not configured: the header is left out.
    Unset,
    /// `*`.
    Any,
    /// The configured names, joined with ", ".
    List(Box<[u8]>),
}

impl Allowance {
    fn compile(list: &[String]) -> Self {
        match list {
            [] => Allowance::Unset,
            [only] if only == "*" => Allowance::Any,
            names => Allowance::List(names.join(", ").into_bytes().into()),
        }
    }
}

#[derive(Debug)]
pub struct CorsPolicy {
    origins: Vec<OriginPattern>,
    any_origin: bool,
    methods: Allowance,
    headers: Allowance,
    expose: Allowance,
    credentials: bool,
    max_age: Box<[u8]>,
}

/// Response headers the filter always owns: the backend's copies are dropped when it writes
/// its own. `access-control-expose-headers` is owned only where the filter configures it.
const OWNED: &[&[u8]] = &[
    b"access-control-allow-origin",
    b"access-control-allow-credentials",
];

impl CorsPolicy {
    pub fn compile(cors: &Cors) -> Result<Self, String> {
        let origins = cors
            .allow_origins
            .iter()
            .map(|o| OriginPattern::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CorsPolicy {
            any_origin: origins.contains(&OriginPattern::Any),
            origins,
            methods: Allowance::compile(&cors.allow_methods),
            headers: Allowance::compile(&cors.allow_headers),
            expose: Allowance::compile(&cors.expose_headers),
            credentials: cors.allow_credentials,
            max_age: cors.max_age_seconds.to_string().into_bytes().into(),
        })
    }

    pub fn allows(&self, origin: &[u8]) -> bool {
        self.origins.iter().any(|pattern| pattern.matches(origin))
    }

    /// `*` may only be sent where credentials are not allowed.
    fn literal_star(&self) -> bool {
        !self.credentials
    }
}

/// The request facts a CORS answer needs, copied out of the receive buffer because the
/// response is written after the request has been consumed. Reused across requests.
#[derive(Debug, Default)]
pub struct CorsRequest {
    /// Origin, then Access-Control-Request-Method, then Access-Control-Request-Headers.
    bytes: Vec<u8>,
    origin_end: usize,
    method_end: usize,
}

impl CorsRequest {
    pub fn capture(&mut self, origin: &[u8], method: &[u8], headers: &[u8]) {
        self.bytes.clear();
        self.bytes.extend_from_slice(origin);
        self.origin_end = self.bytes.len();
        self.bytes.extend_from_slice(method);
        self.method_end = self.bytes.len();
        self.bytes.extend_from_slice(headers);
    }

    fn origin(&self) -> &[u8] {
        &self.bytes[..self.origin_end]
    }

    fn requested_method(&self) -> &[u8] {
        &self.bytes[self.origin_end..self.method_end]
    }

    fn requested_headers(&self) -> &[u8] {
        &self.bytes[self.method_end..]
    }

    /// Drops a buffer an unusually long origin or header list made big.
    pub fn shrink_when_idle(&mut self, keep: usize) {
        if self.bytes.capacity() > keep {
            self.bytes = Vec::new();
        }
    }
}

/// The CORS headers for one response to an allowed origin.
#[derive(Clone, Copy)]
pub struct CorsReply<'a> {
    pub policy: &'a CorsPolicy,
    pub request: &'a CorsRequest,
    pub preflight: bool,
}

impl CorsReply<'_> {
    /// Whether the filter writes `name` itself, so the backend's copy is dropped.
    pub fn owns(&self, name: &[u8]) -> bool {
        OWNED.iter().any(|owned| owned.eq_ignore_ascii_case(name))
            || (self.policy.expose != Allowance::Unset
                && name.eq_ignore_ascii_case(b"access-control-expose-headers"))
    }

    /// Whether the answer depends on the request's Origin, so caches must key on it.
    pub fn varies_by_origin(&self) -> bool {
        !(self.policy.any_origin && self.policy.literal_star())
    }

    /// Writes the CORS header lines; `Vary: Origin` unless a backend `Vary` already got it.
    pub fn write(&self, out: &mut Vec<u8>, vary_written: bool) {
        let policy = self.policy;
        let star = policy.literal_star();
        let line = |out: &mut Vec<u8>, name: &str, value: &[u8]| {
            let _ = write!(out, "{name}: ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        if policy.any_origin && star {
            line(out, "access-control-allow-origin", b"*");
        } else {
            line(out, "access-control-allow-origin", self.request.origin());
        }
        if policy.credentials {
            line(out, "access-control-allow-credentials", b"true");
        }
        match &policy.expose {
            Allowance::Unset => {}
            Allowance::Any if star => line(out, "access-control-expose-headers", b"*"),
            // With credentials a `*` would name a header called "*"; nothing is exposed.
            Allowance::Any => {}
            Allowance::List(names) => line(out, "access-control-expose-headers", names),
        }
        if self.preflight {
            let methods = match &policy.methods {
                Allowance::Unset => None,
                Allowance::Any if star => Some(&b"*"[..]),
                Allowance::Any => non_empty(self.request.requested_method()),
                Allowance::List(names) => Some(&names[..]),
            };
            if let Some(methods) = methods {
                line(out, "access-control-allow-methods", methods);
            }
            let headers = match &policy.headers {
                Allowance::Unset => None,
                Allowance::Any if star => Some(&b"*"[..]),
                Allowance::Any => non_empty(self.request.requested_headers()),
                Allowance::List(names) => Some(&names[..]),
            };
            if let Some(headers) = headers {
                line(out, "access-control-allow-headers", headers);
            }
            line(out, "access-control-max-age", &policy.max_age);
        }
        if self.varies_by_origin() && !vary_written {
            line(out, "vary", b"Origin");
        }
    }
}

fn non_empty(value: &[u8]) -> Option<&[u8]> {
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], methods: &[&str], headers: &[&str], credentials: bool) -> Cors {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Cors {
            allow_origins: list(origins),
            allow_methods: list(methods),
            allow_headers: list(headers),
            expose_headers: list(&["x-header-3", "x-header-4"]),
            allow_credentials: credentials,
            max_age_seconds: 3600,
        }
    }

    fn render(cors: &Cors, origin: &str, method: &str, headers: &str, preflight: bool) -> String {
        let policy = CorsPolicy::compile(cors).unwrap();
        assert!(policy.allows(origin.as_bytes()));
        let mut request = CorsRequest::default();
        request.capture(origin.as_bytes(), method.as_bytes(), headers.as_bytes());
        let mut out = Vec::new();
        CorsReply {
            policy: &policy,
            request: &request,
            preflight,
        }
        .write(&mut out, false);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn explicit_lists_are_sent_whole_and_the_origin_is_echoed() {
        let cors = policy(
            &["https://www.foo.com", "https://*.bar.com"],
            &["GET", "OPTIONS"],
            &["x-header-1", "x-header-2"],
            true,
        );
        assert_eq!(
            render(&cors, "https://xpto.www.bar.com", "GET", "x-header-1", true),
            "access-control-allow-origin: https://xpto.www.bar.com\r\n\
             access-control-allow-credentials: true\r\n\
             access-control-expose-headers: x-header-3, x-header-4\r\n\
             access-control-allow-methods: GET, OPTIONS\r\n\
             access-control-allow-headers: x-header-1, x-header-2\r\n\
             access-control-max-age: 3600\r\n\
             vary: Origin\r\n"
        );
        assert_eq!(
            render(&cors, "https://www.foo.com", "", "", false),
            "access-control-allow-origin: https://www.foo.com\r\n\
             access-control-allow-credentials: true\r\n\
             access-control-expose-headers: x-header-3, x-header-4\r\n\
             vary: Origin\r\n"
        );
    }

    #[test]
    fn wildcards_with_credentials_echo_the_request() {
        let mut cors = policy(&["*"], &["*"], &["*"], true);
        cors.expose_headers = vec!["*".into()];
        assert_eq!(
            render(
                &cors,
                "https://other.foo.com",
                "PUT",
                "x-header-1, x-header-2",
                true
            ),
            "access-control-allow-origin: https://other.foo.com\r\n\
             access-control-allow-credentials: true\r\n\
             access-control-allow-methods: PUT\r\n\
             access-control-allow-headers: x-header-1, x-header-2\r\n\
             access-control-max-age: 3600\r\n\
             vary: Origin\r\n"
        );
    }

    #[test]
    fn wildcards_without_credentials_are_sent_as_stars() {
        let mut cors = policy(&["*"], &["*"], &["*"], false);
        cors.expose_headers.clear();
        assert_eq!(
            render(&cors, "https://foobar.com:12345", "PUT", "", true),
            "access-control-allow-origin: *\r\n\
             access-control-allow-methods: *\r\n\
             access-control-allow-headers: *\r\n\
             access-control-max-age: 3600\r\n"
        );
    }

    #[test]
    fn only_the_filters_headers_are_owned() {
        let mut config = policy(&["*"], &[], &[], false);
        config.expose_headers.clear();
        let cors = CorsPolicy::compile(&config).unwrap();
        let request = CorsRequest::default();
        let reply = CorsReply {
            policy: &cors,
            request: &request,
            preflight: false,
        };
        assert!(reply.owns(b"Access-Control-Allow-Origin"));
        assert!(
            !reply.owns(b"access-control-expose-headers"),
            "not configured here"
        );
        assert!(!reply.owns(b"vary"));
        assert!(!reply.varies_by_origin());
    }
}
