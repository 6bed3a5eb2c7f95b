//! Which request origins a CORS filter allows. Both sides use one parser: the validator rejects
//! a config whose origins do not parse, and the proxy matches requests with the parsed form.
//!
//! An allowed origin is `*` (any origin) or `scheme://host[:port]` with scheme `http` or
//! `https`, where the host may be `*` (any host) or start with one `*.` label (any name of one
//! or more labels under the rest). Without a port, the scheme's default port is meant, so
//! `https://a.example` and `https://a.example:443` are the same origin.

/// One entry of a CORS filter's `allow_origins`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: every origin, including the opaque origin `null`.
    Any,
    Scheme {
        https: bool,
        port: u16,
        host: HostPattern,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// `scheme://*`.
    Any,
    /// Lowercase name, compared without regard to case.
    Exact(String),
    /// `*.example.com` is kept as `.example.com`: the name must end with it and have at least
    /// one label before it, so `foobar.com` never matches `*.bar.com`.
    Suffix(String),
}

impl OriginPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(OriginPattern::Any);
        }
        let (https, port, host) =
            split_origin(pattern.as_bytes()).ok_or_else(|| not_an_origin(pattern))?;
        let host = std::str::from_utf8(host).map_err(|_| not_an_origin(pattern))?;
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(rest) = host.strip_prefix("*.") {
            if !is_origin_host(rest) {
                return Err(not_an_origin(pattern));
            }
            HostPattern::Suffix(format!(".{}", rest.to_ascii_lowercase()))
        } else {
            if !is_origin_host(host) {
                return Err(not_an_origin(pattern));
            }
            HostPattern::Exact(host.to_ascii_lowercase())
        };
        Ok(OriginPattern::Scheme { https, port, host })
    }

    /// Whether the value of a request's `Origin` header is allowed.
    pub fn matches(&self, origin: &[u8]) -> bool {
        let OriginPattern::Scheme { https, port, host } = self else {
            return true;
        };
        let Some((origin_https, origin_port, origin_host)) = split_origin(origin) else {
            return false;
        };
        if origin_https != *https || origin_port != *port {
            return false;
        }
        match host {
            HostPattern::Any => !origin_host.is_empty(),
            HostPattern::Exact(name) => origin_host.eq_ignore_ascii_case(name.as_bytes()),
            HostPattern::Suffix(suffix) => {
                origin_host.len() > suffix.len()
                    && origin_host[origin_host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

fn not_an_origin(pattern: &str) -> String {
    format!(
        "origin {pattern:?} is not \"*\" or http(s)://host[:port] (host may be \"*\" or start with \"*.\")"
    )
}

/// Splits `scheme://host[:port]` into (is https, port, host); the port defaults by scheme.
fn split_origin(origin: &[u8]) -> Option<(bool, u16, &[u8])> {
    let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(origin, b"https://") {
        (true, rest)
    } else {
        (false, strip_prefix_ignore_case(origin, b"http://")?)
    };
    let default_port = if https { 443 } else { 80 };
    // An IPv6 literal keeps its brackets; the port follows the closing one.
    let host_end = if rest.first() == Some(&b'[') {
        rest.iter().position(|&b| b == b']')? + 1
    } else {
        rest.iter().position(|&b| b == b':').unwrap_or(rest.len())
    };
    let (host, port) = rest.split_at(host_end);
    let port = match port {
        [] => default_port,
        [b':', digits @ ..] if !digits.is_empty() && digits.len() <= 5 => {
            let text = std::str::from_utf8(digits).ok()?;
            if !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            text.parse::<u16>().ok().filter(|p| *p != 0)?
        }
        _ => return None,
    };
    if host.is_empty() {
        return None;
    }
    Some((https, port, host))
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &value[prefix.len()..])
}

/// Letters, digits, hyphens and dots, with no empty label: what the Gateway API allows.
fn is_origin_host(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(pattern: &str, origin: &str) -> bool {
        OriginPattern::parse(pattern)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(origin.as_bytes())
    }

    #[test]
    fn exact_origins_compare_scheme_host_and_default_port() {
        assert!(allowed("https://www.foo.com", "https://www.foo.com"));
        assert!(allowed("https://www.foo.com", "https://WWW.Foo.com"));
        assert!(allowed("https://www.foo.com", "https://www.foo.com:443"));
        assert!(allowed("http://a.example:8080", "http://a.example:8080"));
        assert!(!allowed("https://www.foo.com", "http://www.foo.com"));
        assert!(!allowed("https://www.foo.com", "https://www.foo.com:8443"));
        assert!(!allowed("https://www.foo.com", "https://www.foo.com.evil"));
        assert!(!allowed("https://www.foo.com", "null"));
    }

    #[test]
    fn wildcard_hosts_need_a_label_before_the_suffix() {
        assert!(allowed("https://*.bar.com", "https://www.bar.com"));
        assert!(allowed("https://*.bar.com", "https://xpto.www.bar.com"));
        assert!(!allowed("https://*.bar.com", "https://foobar.com"));
        assert!(!allowed("https://*.bar.com", "https://bar.com"));
        assert!(!allowed("https://*.bar.com", "https://.bar.com"));
        assert!(!allowed("https://*.bar.com", "http://www.bar.com"));
        assert!(allowed("https://*", "https://anything.example"));
        assert!(!allowed("https://*", "http://anything.example"));
    }

    #[test]
    fn star_allows_every_origin() {
        assert!(allowed("*", "https://foobar.com:12345"));
        assert!(allowed("*", "null"));
    }

    #[test]
    fn malformed_patterns_and_origins_are_refused() {
        for bad in [
            "",
            "www.foo.com",
            "ftp://a.com",
            "https://",
            "https://a..com",
            "https://a.com:0",
            "https://a.com:99999",
            "https://a.com/path",
            "https://*a.com",
            "https://a.*.com",
            "https://a.com:",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad:?} parsed");
        }
        for bad in ["https://a.com:x", "https://a.com:1:2", "https://", "a.com"] {
            assert!(!allowed("https://*", bad), "{bad:?} matched");
        }
        assert!(!allowed("http://*", "http://[::1]:8080"));
        assert!(allowed("http://*", "http://[::1]"));
    }
}
