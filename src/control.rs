//! The control and metrics endpoint's HTTP/1.1, sans-IO: bytes in,
//! requests out (parsed with httparse), responses to bytes. The reactor
//! owns the sockets (`reactor::control`); what each route does is asked of
//! a [`Target`].
//!
//! Routes: `GET /metrics` (Prometheus text), `GET /stats` (JSON), `PUT
//! /rules` (a rules file as the body; checked whole before it replaces the
//! set in force), `POST /reset` (zero the counters), `GET /health`.
//! Anything else: 404, or 405 with `Allow`. A request that is not HTTP/1.x
//! gets 400 and the connection closes; a body over [`MAX_BODY`] gets 413.
//! Keep-alive as HTTP/1.1 says (`Connection: close` honoured; HTTP/1.0
//! closes unless it asks to stay).

use std::fmt::Write as _;

/// Largest request body (`PUT /rules`).
pub const MAX_BODY: usize = 1 << 20;
/// Largest request head.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 32;

/// What the routes act on.
pub trait Target {
    /// The Prometheus text exposition.
    fn metrics(&mut self) -> String;
    /// The statistics as JSON.
    fn stats(&mut self) -> serde_json::Value;
    /// Replaces the rule set with the one `text` describes; the error says
    /// what is wrong (with its line).
    fn put_rules(&mut self, text: &str) -> Result<String, String>;
    /// Zeroes the counters.
    fn reset(&mut self);
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The body.
    pub body: Vec<u8>,
    /// The client wants the connection kept.
    pub keep_alive: bool,
    /// HTTP/1.0: keeping the connection must be said in the response.
    pub http10: bool,
}

/// What [`parse`] found at the start of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed.
    Partial,
    /// A complete request and the bytes it took.
    Complete(Request, usize),
    /// Not a request we can serve: answer this status and close.
    Bad(u16, &'static str),
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Parses the request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parse::Bad(431, "request head too large")
        }
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parse::Bad(431, "too many headers"),
        Err(_) => return Parse::Bad(400, "malformed request"),
    };
    if head > MAX_HEAD {
        return Parse::Bad(431, "request head too large");
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parse::Bad(400, "malformed request");
    };
    if header(req.headers, "transfer-encoding").is_some() {
        return Parse::Bad(
            501,
            "Transfer-Encoding is not supported; send Content-Length",
        );
    }
    let lengths = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .count();
    if lengths > 1 {
        // Two lengths: which one frames the next request? (RFC 9112 6.3)
        return Parse::Bad(400, "more than one Content-Length");
    }
    let len = match header(req.headers, "content-length") {
        None => 0,
        // Digits only (RFC 9110 8.6): no sign, no list.
        Some(v) => match std::str::from_utf8(v)
            .ok()
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok())
        {
            Some(n) if n > MAX_BODY => return Parse::Bad(413, "body too large"),
            Some(n) => n,
            None => return Parse::Bad(400, "bad Content-Length"),
        },
    };
    let Some(body) = buf.get(head..head + len) else {
        return Parse::Partial;
    };
    // A comma-separated list of options (RFC 9110 7.6.1).
    let option = |name: &[u8]| {
        header(req.headers, "connection").is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|o| o.trim_ascii().eq_ignore_ascii_case(name))
        })
    };
    // HTTP/1.1 keeps the connection by default, 1.0 only when asked.
    let keep_alive = !option(b"close") && (version >= 1 || option(b"keep-alive"));
    let path = target.split('?').next().unwrap_or(target);
    Parse::Complete(
        Request {
            method: method.to_string(),
            path: path.to_string(),
            body: body.to_vec(),
            keep_alive,
            http10: version == 0,
        },
        head + len,
    )
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// For 405: the methods the path takes.
    pub allow: Option<&'static str>,
    /// Send the head only (a HEAD request).
    pub head_only: bool,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            allow: None,
            head_only: false,
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        let mut b: String = body.into();
        if !b.ends_with('\n') {
            b.push('\n');
        }
        Self::new(status, "text/plain; charset=utf-8", b)
    }

    /// The bytes on the wire; `close` adds `Connection: close`.
    pub fn encode(&self, close: bool, out: &mut Vec<u8>) {
        self.encode_for(close, false, out);
    }

    /// As `encode`; `http10` and kept: say `Connection: keep-alive`.
    pub fn encode_for(&self, close: bool, http10: bool, out: &mut Vec<u8>) {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Content Too Large",
            422 => "Unprocessable Content",
            431 => "Request Header Fields Too Large",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if let Some(a) = self.allow {
            let _ = write!(head, "Allow: {a}\r\n");
        }
        if close {
            head.push_str("Connection: close\r\n");
        } else if http10 {
            head.push_str("Connection: keep-alive\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// Serves one request.
pub fn route(req: &Request, t: &mut dyn Target) -> Response {
    let allowed: &'static str = match req.path.as_str() {
        "/metrics" | "/stats" | "/health" => "GET, HEAD",
        "/rules" => "PUT",
        "/reset" => "POST",
        _ => {
            return Response::text(
                404,
                "not found: try /metrics, /stats, /health, PUT /rules, POST /reset",
            )
        }
    };
    let method = req.method.as_str();
    let get = method == "GET" || method == "HEAD";
    let mut resp = match (req.path.as_str(), method) {
        ("/metrics", _) if get => {
            Response::new(200, "text/plain; version=0.0.4; charset=utf-8", t.metrics())
        }
        ("/stats", _) if get => {
            Response::new(200, "application/json", t.stats().to_string() + "\n")
        }
        ("/health", _) if get => Response::text(200, "ok"),
        ("/rules", "PUT") => match std::str::from_utf8(&req.body) {
            Err(_) => Response::text(400, "the rules are not UTF-8"),
            Ok(text) => match t.put_rules(text) {
                Ok(msg) => Response::text(200, msg),
                Err(e) => Response::text(400, e),
            },
        },
        ("/reset", "POST") => {
            t.reset();
            Response::text(200, "counters reset")
        }
        _ => {
            let mut r = Response::text(405, format!("{} takes {allowed}", req.path));
            r.allow = Some(allowed);
            r
        }
    };
    // HEAD: the head a GET would get, without the body (RFC 9110 9.3.2).
    resp.head_only = method == "HEAD";
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T {
        resets: u32,
        rules: Vec<String>,
    }

    impl Target for T {
        fn metrics(&mut self) -> String {
            "m 1\n".into()
        }
        fn stats(&mut self) -> serde_json::Value {
            serde_json::json!({"a": 1})
        }
        fn put_rules(&mut self, text: &str) -> Result<String, String> {
            if text.contains("bad") {
                return Err("line 1, column 1: bad".into());
            }
            self.rules.push(text.into());
            Ok("1 rule".into())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn req(raw: &str) -> Request {
        match parse(raw.as_bytes()) {
            Parse::Complete(r, n) => {
                assert_eq!(n, raw.len());
                r
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_requests_and_their_bodies() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Parse::Partial
        );
        let r = req("GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.keep_alive),
            ("GET", "/metrics", true)
        );
        assert_eq!(
            parse(b"PUT /rules HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Parse::Partial
        );
        let r = req("PUT /rules HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde");
        assert_eq!((r.body.as_slice(), r.keep_alive), (&b"abcde"[..], false));
        assert!(!req("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(matches!(
            parse(b"POST /reset HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nabcde"),
            Parse::Bad(400, _)
        ));
        assert!(!req("GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n").keep_alive);
        assert!(req("GET / HTTP/1.0\r\nConnection: keep-alive, x\r\n\r\n").keep_alive);
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx"),
            Parse::Bad(400, _)
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01garbage\r\n\r\n"),
            Parse::Bad(400, _)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Parse::Bad(400, _)
        ));
        assert!(matches!(
            parse(b"PUT /rules HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Parse::Bad(413, _)
        ));
        assert!(matches!(
            parse(b"PUT /rules HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parse::Bad(501, _)
        ));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(parse(long.as_bytes()), Parse::Bad(431, _)));
    }

    #[test]
    fn routes() {
        let mut t = T {
            resets: 0,
            rules: Vec::new(),
        };
        let r = route(&req("GET /metrics HTTP/1.1\r\n\r\n"), &mut t);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"m 1\n"[..]));
        assert!(r.content_type.starts_with("text/plain; version=0.0.4"));
        let r = route(&req("GET /stats HTTP/1.1\r\n\r\n"), &mut t);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{\"a\":1}\n"[..]));
        assert_eq!(
            route(&req("GET /health HTTP/1.1\r\n\r\n"), &mut t).status,
            200
        );
        let r = route(&req("POST /metrics HTTP/1.1\r\n\r\n"), &mut t);
        assert_eq!((r.status, r.allow), (405, Some("GET, HEAD")));
        assert_eq!(
            route(&req("GET /nope HTTP/1.1\r\n\r\n"), &mut t).status,
            404
        );
        let r = route(
            &req("PUT /rules HTTP/1.1\r\nContent-Length: 3\r\n\r\nbad"),
            &mut t,
        );
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body).contains("line 1"));
        let r = route(
            &req("PUT /rules HTTP/1.1\r\nContent-Length: 2\r\n\r\nok"),
            &mut t,
        );
        assert_eq!(r.status, 200);
        assert_eq!(t.rules, vec!["ok".to_string()]);
        assert_eq!(
            route(&req("POST /reset HTTP/1.1\r\n\r\n"), &mut t).status,
            200
        );
        assert_eq!(t.resets, 1);
        let mut out = Vec::new();
        Response::text(200, "ok").encode(true, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
    }
}
