//! Hostname intersection between a listener and a route (Gateway API hostname matching).
//!
//! A hostname is exact ("a.example.com") or a wildcard ("*.example.com", one or more labels in
//! place of the '*', never the bare "example.com").

/// Whether `pattern` (exact or wildcard) matches the concrete or wildcard `host`.
fn covers(wildcard_suffix: &str, host: &str) -> bool {
    host.len() > wildcard_suffix.len() && host.ends_with(wildcard_suffix)
}

/// The hostname serving requests that match both `listener` and `route`, or None when no
/// request can match both.
pub fn intersect(listener: &str, route: &str) -> Option<String> {
    let listener = listener.to_ascii_lowercase();
    let route = route.to_ascii_lowercase();
    match (listener.strip_prefix('*'), route.strip_prefix('*')) {
        (None, None) => (listener == route).then_some(route),
        // Listener exact, route wildcard: the listener's host if the wildcard covers it.
        (None, Some(suffix)) => covers(suffix, &listener).then_some(listener),
        // Listener wildcard, route exact.
        (Some(suffix), None) => covers(suffix, &route).then_some(route),
        // Both wildcards: the narrower one, if one contains the other.
        (Some(l), Some(r)) => {
            if l == r || covers(l, r) {
                Some(route)
            } else if covers(r, l) {
                Some(listener)
            } else {
                None
            }
        }
    }
}

/// The route's effective hostnames on a listener: None when they do not intersect at all;
/// an empty list means "any host the listener accepts".
pub fn effective(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    match (listener, route.is_empty()) {
        (None, _) => Some(route.iter().map(|h| h.to_ascii_lowercase()).collect()),
        (Some(listener), true) => Some(vec![listener.to_ascii_lowercase()]),
        (Some(listener), false) => {
            let mut hosts: Vec<String> = route
                .iter()
                .filter_map(|h| intersect(listener, h))
                .collect();
            hosts.sort();
            hosts.dedup();
            (!hosts.is_empty()).then_some(hosts)
        }
    }
}

/// Whether two routes' effective hostnames on one listener (see [`effective`]; empty: any
/// host the listener accepts) share a host some request could carry.
pub fn overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter()
            .any(|x| b.iter().any(|y| intersect(x, y).is_some()))
}

/// Whether two listener hostnames on one port could both match some request host (used for
/// conflict detection only when equal; overlapping wildcards are allowed).
pub fn same(a: Option<&str>, b: Option<&str>) -> bool {
    a.map(str::to_ascii_lowercase) == b.map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersections() {
        let cases = [
            ("a.example.com", "a.example.com", Some("a.example.com")),
            ("a.example.com", "b.example.com", None),
            ("a.example.com", "*.example.com", Some("a.example.com")),
            ("*.example.com", "a.example.com", Some("a.example.com")),
            ("*.example.com", "a.b.example.com", Some("a.b.example.com")),
            ("*.example.com", "example.com", None),
            ("example.com", "*.example.com", None),
            ("*.example.com", "*.example.com", Some("*.example.com")),
            ("*.example.com", "*.a.example.com", Some("*.a.example.com")),
            ("*.a.example.com", "*.example.com", Some("*.a.example.com")),
            ("*.example.com", "*.example.org", None),
            ("A.Example.com", "a.example.COM", Some("a.example.com")),
        ];
        for (listener, route, expected) in cases {
            assert_eq!(
                intersect(listener, route).as_deref(),
                expected,
                "{listener} ∩ {route}"
            );
        }
    }

    #[test]
    fn effective_hostnames() {
        let hosts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(effective(None, &[]), Some(vec![]));
        assert_eq!(effective(None, &hosts(&["a.com"])), Some(hosts(&["a.com"])));
        assert_eq!(effective(Some("*.a.com"), &[]), Some(hosts(&["*.a.com"])));
        assert_eq!(
            effective(Some("*.a.com"), &hosts(&["x.a.com", "b.com", "*.y.a.com"])),
            Some(hosts(&["*.y.a.com", "x.a.com"]))
        );
        assert_eq!(effective(Some("a.com"), &hosts(&["b.com"])), None);
    }

    #[test]
    fn overlaps() {
        let hosts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(overlap(&[], &hosts(&["a.com"])));
        assert!(overlap(&hosts(&["a.com"]), &[]));
        assert!(overlap(&hosts(&["b.com", "x.a.com"]), &hosts(&["*.a.com"])));
        assert!(overlap(&hosts(&["*.a.com"]), &hosts(&["*.x.a.com"])));
        assert!(!overlap(&hosts(&["a.com"]), &hosts(&["b.com", "*.a.com"])));
    }
}
