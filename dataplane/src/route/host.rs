//! Hostnames: normalizing the request's authority and matching Gateway API host patterns.

/// Longest hostname a DNS name can have; longer hosts never match anything.
pub const MAX_HOST_LEN: usize = 253;

/// A Gateway API hostname pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// "example.com", lowercase.
    Exact(Box<str>),
    /// "*.example.com", stored as the suffix ".example.com": matches one or more labels in
    /// place of the '*', never the bare "example.com".
    Wildcard(Box<str>),
    Any,
}

impl HostPattern {
    pub fn parse(pattern: Option<&str>) -> HostPattern {
        match pattern {
            None => HostPattern::Any,
            Some(p) => match p.strip_prefix('*') {
                Some(suffix) => HostPattern::Wildcard(suffix.to_ascii_lowercase().into()),
                None => HostPattern::Exact(p.to_ascii_lowercase().into()),
            },
        }
    }

    /// A route's hostnames as patterns; no hostnames means any host.
    pub fn all_of(hostnames: &[String]) -> Vec<HostPattern> {
        if hostnames.is_empty() {
            vec![HostPattern::Any]
        } else {
            hostnames
                .iter()
                .map(|h| HostPattern::parse(Some(h)))
                .collect()
        }
    }

    /// `host` must be normalized (see [`normalize`]).
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => **exact == *host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
            HostPattern::Any => true,
        }
    }

    /// Higher is more specific: exact beats any wildcard; longer wildcards beat shorter ones.
    pub fn specificity(&self) -> usize {
        match self {
            HostPattern::Exact(_) => usize::MAX,
            HostPattern::Wildcard(suffix) => suffix.len(),
            HostPattern::Any => 0,
        }
    }
}

/// Normalizes a request authority for matching: drops the port, lowercases, drops one
/// trailing dot. Writes into `out` to avoid allocating; returns None for hosts that cannot be
/// names (too long, not UTF-8).
pub fn normalize<'a>(authority: &[u8], out: &'a mut [u8; MAX_HOST_LEN + 1]) -> Option<&'a str> {
    let (host, _port) = crate::http::request::split_host_port(authority);
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.len() > MAX_HOST_LEN {
        return None;
    }
    let out = &mut out[..host.len()];
    for (o, &b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Option<String> {
        let mut buf = [0u8; MAX_HOST_LEN + 1];
        normalize(raw.as_bytes(), &mut buf).map(str::to_string)
    }

    #[test]
    fn normalization() {
        assert_eq!(norm("Example.COM:8080").as_deref(), Some("example.com"));
        assert_eq!(norm("example.com.").as_deref(), Some("example.com"));
        assert_eq!(norm("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(norm("").as_deref(), Some(""));
        assert_eq!(norm(&"a".repeat(300)), None);
    }

    #[test]
    fn wildcards_need_at_least_one_label() {
        let p = HostPattern::parse(Some("*.Example.com"));
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("aexample.com"));
        assert!(HostPattern::parse(Some("A.com")).matches("a.com"));
        assert!(HostPattern::Any.matches("anything"));
        assert!(
            HostPattern::parse(Some("*.a.example.com")).specificity()
                > HostPattern::parse(Some("*.example.com")).specificity()
        );
    }
}
