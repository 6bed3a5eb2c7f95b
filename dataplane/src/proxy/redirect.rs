//! The Location of a RequestRedirect filter, by the Gateway API rules for scheme, host, port
//! and path.

use std::io::Write as _;

use crate::http::request::split_host_port;
use crate::route::table::Redirect;

/// The request as the redirect sees it.
pub struct Origin<'a> {
    pub scheme: &'a str,
    /// The request authority (Host), possibly with a port.
    pub authority: &'a [u8],
    pub listener_port: u16,
    pub path: &'a [u8],
    pub matched_prefix_len: usize,
    pub query: Option<&'a [u8]>,
}

/// Writes the absolute Location URL into `out` (cleared first).
pub fn location(out: &mut Vec<u8>, redirect: &Redirect, origin: &Origin<'_>) {
    out.clear();
    let request_host = split_host_port(origin.authority).0;
    if redirect.hostname.is_none() && request_host.is_empty() {
        // No host to put in an absolute URL (an HTTP/1.0 request without Host): a relative
        // reference keeps the client on the same origin.
        write_path(out, redirect, origin);
        return;
    }
    let scheme = redirect.scheme.as_deref().unwrap_or(origin.scheme);
    // Port: the configured one; else the scheme's well-known port when the scheme changes;
    // else the listener's port. Default ports are left out of the URL.
    let port = match (redirect.port, redirect.scheme.as_deref()) {
        (Some(port), _) => port,
        (None, Some("https")) => 443,
        (None, Some("http")) => 80,
        (None, _) => origin.listener_port,
    };
    out.extend_from_slice(scheme.as_bytes());
    out.extend_from_slice(b"://");
    match &redirect.hostname {
        Some(host) => out.extend_from_slice(host.as_bytes()),
        None => out.extend_from_slice(request_host),
    }
    let default_port = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
    if !default_port {
        let _ = write!(out, ":{port}");
    }
    write_path(out, redirect, origin);
}

fn write_path(out: &mut Vec<u8>, redirect: &Redirect, origin: &Origin<'_>) {
    match &redirect.path {
        Some(rewrite) => rewrite.apply(origin.path, origin.matched_prefix_len, out),
        None => out.extend_from_slice(origin.path),
    }
    if let Some(query) = origin.query {
        out.push(b'?');
        out.extend_from_slice(query);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::table::PathRewrite;

    fn redirect(
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
        path: Option<PathRewrite>,
    ) -> Redirect {
        Redirect {
            scheme: scheme.map(Into::into),
            hostname: host.map(Into::into),
            port,
            path,
            status: 302,
        }
    }

    fn origin<'a>(
        scheme: &'a str,
        authority: &'a str,
        listener_port: u16,
        path: &'a str,
    ) -> Origin<'a> {
        Origin {
            scheme,
            authority: authority.as_bytes(),
            listener_port,
            path: path.as_bytes(),
            matched_prefix_len: 0,
            query: None,
        }
    }

    fn render(r: &Redirect, o: &Origin<'_>) -> String {
        let mut out = Vec::new();
        location(&mut out, r, o);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn gateway_api_port_rules() {
        let o = origin("http", "example.com", 80, "/p");
        assert_eq!(
            render(&redirect(None, Some("example.org"), None, None), &o),
            "http://example.org/p"
        );
        assert_eq!(
            render(&redirect(Some("https"), None, None, None), &o),
            "https://example.com/p"
        );
        assert_eq!(
            render(&redirect(None, None, Some(8443), None), &o),
            "http://example.com:8443/p"
        );
        assert_eq!(
            render(&redirect(Some("https"), None, Some(8443), None), &o),
            "https://example.com:8443/p"
        );
        let o = origin("http", "example.com:8080", 8080, "/p");
        assert_eq!(
            render(&redirect(None, Some("a.b"), None, None), &o),
            "http://a.b:8080/p"
        );
        assert_eq!(
            render(&redirect(Some("http"), None, None, None), &o),
            "http://example.com/p"
        );
        let o = origin("https", "example.com", 443, "/p");
        assert_eq!(
            render(&redirect(Some("http"), None, None, None), &o),
            "http://example.com/p"
        );
        assert_eq!(
            render(&redirect(None, None, None, None), &o),
            "https://example.com/p"
        );
    }

    #[test]
    fn hostless_requests_get_a_relative_location() {
        let o = origin("http", "", 8080, "/p");
        assert_eq!(render(&redirect(Some("https"), None, None, None), &o), "/p");
        assert_eq!(
            render(&redirect(None, Some("a.b"), None, None), &o),
            "http://a.b:8080/p"
        );
    }

    #[test]
    fn paths_and_queries() {
        let mut o = origin("http", "h", 80, "/old/x");
        o.matched_prefix_len = 4;
        o.query = Some(b"a=1");
        let r = redirect(
            None,
            None,
            None,
            Some(PathRewrite::Prefix("/new".as_bytes().into())),
        );
        assert_eq!(render(&r, &o), "http://h/new/x?a=1");
        let r = redirect(
            None,
            None,
            None,
            Some(PathRewrite::Full("/fixed".as_bytes().into())),
        );
        assert_eq!(render(&r, &o), "http://h/fixed?a=1");
    }
}
