//! Writing heads canonically: every message the proxy sends is serialized from parsed parts
//! with CRLF line endings, one framing header, no folding, and hop-by-hop headers removed.
//! Client bytes are never copied through verbatim.

use std::io::Write as _;
use std::net::SocketAddr;

use crate::http::request::RequestHead;
use crate::http::response::{ResponseFraming, ResponseHead};
use crate::http::{HeaderKind, HeaderSpan, Version, reason_phrase};
use crate::route::cors::CorsReply;
use crate::route::table::{HeaderAction, HeaderOps};

/// How the proxy frames the body it sends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 clients only: body ends when the connection closes.
    UntilClose,
}

/// Header edits applied in order: the rule's filter, then the chosen backend's, then (on
/// responses to an allowed cross-origin request) the CORS headers.
#[derive(Clone, Copy)]
pub struct HeaderEdits<'a> {
    pub rule: &'a HeaderOps,
    pub backend: &'a HeaderOps,
    pub cors: Option<CorsReply<'a>>,
}

/// Marks, in `appended`, that `Origin` went into an existing `Vary` header.
const VARY_APPENDED: u32 = u32::MAX;

impl<'a> HeaderEdits<'a> {
    pub fn new(rule: &'a HeaderOps, backend: &'a HeaderOps) -> Self {
        HeaderEdits {
            rule,
            backend,
            cors: None,
        }
    }

    fn drops(&self, name: &[u8]) -> bool {
        self.rule.action(name) == HeaderAction::Drop
            || self.backend.action(name) == HeaderAction::Drop
            || self.cors.is_some_and(|cors| cors.owns(name))
    }

    /// Writes an existing header with `add` values appended, or nothing if a filter drops it.
    fn write_existing(
        &self,
        out: &mut Vec<u8>,
        name: &[u8],
        value: &[u8],
        appended: &mut Vec<u32>,
    ) {
        if self.drops(name) {
            return;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        if let Some(cors) = self.cors
            && cors.varies_by_origin()
            && name.eq_ignore_ascii_case(b"vary")
            && !appended.contains(&VARY_APPENDED)
        {
            out.extend_from_slice(b", Origin");
            appended.push(VARY_APPENDED);
        }
        let lower_matches = |op_lower: &[u8]| op_lower.eq_ignore_ascii_case(name);
        for (i, op) in self
            .rule
            .add
            .iter()
            .chain(self.backend.add.iter())
            .enumerate()
        {
            if lower_matches(&op.lower) && !appended.contains(&(i as u32)) {
                out.push(b',');
                out.extend_from_slice(&op.value);
                appended.push(i as u32);
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Writes `set` values, and `add` values whose header did not exist. Names in `written`
    /// were already written by the proxy itself and are left alone.
    fn write_new(&self, out: &mut Vec<u8>, appended: &[u32], written: &[&[u8]]) {
        let free = |lower: &[u8]| {
            !written.iter().any(|w| w.eq_ignore_ascii_case(lower))
                && !self.cors.is_some_and(|cors| cors.owns(lower))
        };
        for op in &self.rule.set {
            // A backend filter that sets or removes the same header wins over the rule's.
            if self.backend.action(&op.lower) == HeaderAction::Keep && free(&op.lower) {
                write_header(out, &op.name, &op.value);
            }
        }
        for op in self.backend.set.iter().filter(|op| free(&op.lower)) {
            write_header(out, &op.name, &op.value);
        }
        let adds = self.rule.add.iter().chain(self.backend.add.iter());
        for (i, op) in adds.enumerate() {
            if !appended.contains(&(i as u32)) && !self.drops(&op.lower) && free(&op.lower) {
                write_header(out, &op.name, &op.value);
            }
        }
        if let Some(cors) = self.cors {
            cors.write(out, appended.contains(&VARY_APPENDED));
        }
    }

    /// The value a filter sets for `name` (the backend's filter wins over the rule's).
    fn set_value(&self, name: &[u8]) -> Option<&'a [u8]> {
        find_set(self.backend, name).or_else(|| find_set(self.rule, name))
    }
}

fn find_set<'a>(ops: &'a HeaderOps, name: &[u8]) -> Option<&'a [u8]> {
    ops.set
        .iter()
        .find(|op| op.lower.eq_ignore_ascii_case(name))
        .map(|op| &*op.value)
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Everything that shapes the upstream request beyond the client's head.
pub struct UpstreamRequest<'a> {
    /// Rewritten path, or None to keep the client's.
    pub path: Option<&'a [u8]>,
    /// Rewritten Host, or None to keep the client's.
    pub host: Option<&'a [u8]>,
    pub edits: HeaderEdits<'a>,
    pub peer: SocketAddr,
    pub tls: bool,
    /// Used as Host when the client sent none (HTTP/1.0).
    pub endpoint: SocketAddr,
}

/// Serializes the request head sent upstream into `out` (cleared first).
pub fn upstream_request(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    req: &UpstreamRequest<'_>,
) {
    out.clear();
    out.extend_from_slice(head.method(buf));
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or_else(|| head.path(buf)));
    if let Some(query) = head.query(buf) {
        out.push(b'?');
        out.extend_from_slice(query);
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    let original_host = head.host(buf);
    // URLRewrite's hostname first, then a header filter that sets Host, then the client's.
    match req.host.or_else(|| req.edits.set_value(b"host")) {
        Some(host) => out.extend_from_slice(host),
        None if !original_host.is_empty() => out.extend_from_slice(original_host),
        None => {
            let _ = write!(out, "{}", req.endpoint);
        }
    }
    out.extend_from_slice(b"\r\n");

    let mut appended: Vec<u32> = Vec::new();
    for header in &head.headers {
        match header.kind {
            HeaderKind::Host
            | HeaderKind::Expect
            | HeaderKind::XForwardedProto
            | HeaderKind::XForwardedHost
            | HeaderKind::XForwardedFor
            | HeaderKind::Forwarded => continue,
            kind if kind.is_hop_by_hop() => continue,
            _ => {}
        }
        let name = &buf[header.name.clone()];
        if head.is_connection_option(buf, name) {
            continue;
        }
        req.edits
            .write_existing(out, name, &buf[header.value.clone()], &mut appended);
    }
    req.edits.write_new(out, &appended, &[b"host"]);

    // Forwarding headers: the client address is appended, scheme and host are ours.
    let scheme: &[u8] = if req.tls { b"https" } else { b"http" };
    out.extend_from_slice(b"x-forwarded-for: ");
    write_list_prefix(out, buf, &head.headers, HeaderKind::XForwardedFor);
    let _ = write!(out, "{}", req.peer.ip());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(scheme);
    out.extend_from_slice(b"\r\n");
    if !original_host.is_empty() {
        write_header(out, b"x-forwarded-host", original_host);
    }
    out.extend_from_slice(b"forwarded: ");
    write_list_prefix(out, buf, &head.headers, HeaderKind::Forwarded);
    match req.peer.ip() {
        std::net::IpAddr::V4(ip) => {
            let _ = write!(out, "for={ip}");
        }
        std::net::IpAddr::V6(ip) => {
            let _ = write!(out, "for=\"[{ip}]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(scheme);
    if !original_host.is_empty()
        && original_host
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'"')
    {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(original_host);
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");

    if head.upgrade
        && let Some(upgrade) = head.header(buf, "upgrade")
    {
        write_header(out, b"upgrade", upgrade);
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    match head.framing {
        crate::http::request::RequestFraming::None => {}
        crate::http::request::RequestFraming::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        crate::http::request::RequestFraming::Chunked => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes every incoming field line of `kind` as one comma-separated list followed by ", ",
/// so the proxy's own element is appended after all of them (RFC 9110 §5.3).
fn write_list_prefix(out: &mut Vec<u8>, buf: &[u8], headers: &[HeaderSpan], kind: HeaderKind) {
    for header in headers.iter().filter(|h| h.kind == kind) {
        let value = &buf[header.value.clone()];
        if !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
}

/// How the client connection continues after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    KeepAlive,
    Close,
}

/// Serializes the response head sent to the client into `out` (cleared first).
pub fn client_response(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    edits: HeaderEdits<'_>,
    framing: OutFraming,
    client: Version,
    persistence: Persistence,
) {
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} ", head.status);
    if head.reason.is_empty() {
        out.extend_from_slice(reason_phrase(head.status).as_bytes());
    } else {
        out.extend_from_slice(&buf[head.reason.clone()]);
    }
    out.extend_from_slice(b"\r\n");
    let switching = head.status == 101;
    let mut appended: Vec<u32> = Vec::new();
    for header in &head.headers {
        let keep_length = header.kind == HeaderKind::ContentLength && framing == OutFraming::None;
        let keep_upgrade = header.kind == HeaderKind::Upgrade && switching;
        if header.kind.is_hop_by_hop() && !keep_length && !keep_upgrade {
            continue;
        }
        let name = &buf[header.name.clone()];
        if head.is_connection_option(buf, name) {
            continue;
        }
        edits.write_existing(out, name, &buf[header.value.clone()], &mut appended);
    }
    edits.write_new(out, &appended, &[]);
    match framing {
        OutFraming::None | OutFraming::UntilClose => {}
        OutFraming::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        OutFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else {
        match (persistence, client) {
            (Persistence::Close, _) => out.extend_from_slice(b"connection: close\r\n"),
            (Persistence::KeepAlive, Version::Http10) => {
                out.extend_from_slice(b"connection: keep-alive\r\n")
            }
            (Persistence::KeepAlive, Version::Http11) => {}
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A response the proxy makes up itself (errors, redirects).
pub fn local_response(
    out: &mut Vec<u8>,
    status: u16,
    extra: &[(&[u8], &[u8])],
    edits: Option<HeaderEdits<'_>>,
    persistence: Persistence,
    client: Version,
    head_request: bool,
) {
    out.clear();
    let reason = reason_phrase(status);
    let body_len = if status == 204 || status == 304 || (300..400).contains(&status) {
        0
    } else {
        // "<status> <reason>\n"
        4 + reason.len() + 1
    };
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in extra {
        write_header(out, name, value);
    }
    if let Some(edits) = edits {
        let mut written: Vec<&[u8]> = extra.iter().map(|(name, _)| *name).collect();
        written.extend_from_slice(&[b"content-length", b"content-type"]);
        edits.write_new(out, &[], &written);
    }
    // A 204 carries no Content-Length at all (RFC 9110 §8.6).
    if status != 204 {
        let _ = write!(out, "content-length: {body_len}\r\n");
    }
    if body_len > 0 {
        out.extend_from_slice(b"content-type: text/plain\r\n");
    }
    match (persistence, client) {
        (Persistence::Close, _) => out.extend_from_slice(b"connection: close\r\n"),
        (Persistence::KeepAlive, Version::Http10) => {
            out.extend_from_slice(b"connection: keep-alive\r\n")
        }
        (Persistence::KeepAlive, Version::Http11) => {}
    }
    out.extend_from_slice(b"\r\n");
    if body_len > 0 && !head_request {
        let _ = writeln!(out, "{status} {reason}");
    }
}

/// Maps the upstream response framing to what the client gets.
pub fn client_framing(upstream: ResponseFraming, client: Version) -> OutFraming {
    match (upstream, client) {
        (ResponseFraming::None, _) => OutFraming::None,
        (ResponseFraming::Length(n), _) => OutFraming::Length(n),
        (ResponseFraming::Chunked | ResponseFraming::UntilClose, Version::Http11) => {
            OutFraming::Chunked
        }
        (ResponseFraming::Chunked | ResponseFraming::UntilClose, Version::Http10) => {
            OutFraming::UntilClose
        }
    }
}

#[cfg(test)]
mod tests;
