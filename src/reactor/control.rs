//! The control endpoint's sockets (`--control IP:PORT`), served by the mail
//! loop itself: a listener and a few HTTP connections on tokens above the
//! mail connections'. Every socket is non-blocking and every buffer is
//! bounded, so a control client can neither block mail traffic nor grow the
//! server: at most [`MAX_CLIENTS`] connections, each holding at most one
//! request head and body (`control::MAX_HEAD + control::MAX_BODY`) and the
//! responses it has not read (reading stops past [`OUT_LIMIT`]); idle ones
//! close after [`IDLE`].

use super::listener::{self, ListenError};
use crate::control::{self, Parse, Response, Target};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

/// Control connections at once; more are closed on accept.
pub const MAX_CLIENTS: usize = 32;
/// A control connection idle this long is closed.
pub const IDLE: Duration = Duration::from_secs(30);
/// Unsent response bytes past which a client's requests are not read.
pub const OUT_LIMIT: usize = 1 << 20;
/// The listener's token; clients follow it.
pub const LISTENER: Token = Token(1 << 40);
const BASE: usize = (1 << 40) + 1;
const MAX_IN: usize = control::MAX_HEAD + control::MAX_BODY;

struct Client {
    sock: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    last: Instant,
    /// Close once `out` is written.
    closing: bool,
}

/// The listener and its clients.
pub struct ControlPort {
    listener: TcpListener,
    clients: Slab<Client>,
    addr: SocketAddr,
    /// An accept failed for want of descriptors: accept again next turn.
    retry_accept: bool,
}

impl ControlPort {
    /// Binds and registers the listener.
    pub fn bind(addr: SocketAddr, registry: &Registry) -> Result<Self, ListenError> {
        let mut l = listener::bind(addr, 64, false)?;
        registry
            .register(&mut l, LISTENER, Interest::READABLE)
            .map_err(|source| ListenError::tcp(addr, source))?;
        let addr = l.local_addr().unwrap_or(addr);
        Ok(Self {
            listener: l,
            clients: Slab::new(),
            addr,
            retry_accept: false,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether `token` is this port's.
    pub fn owns(token: Token) -> bool {
        (LISTENER.0..BASE + MAX_CLIENTS).contains(&token.0)
    }

    /// A readiness event on one of this port's tokens.
    pub fn event(&mut self, token: Token, registry: &Registry, now: Instant, t: &mut dyn Target) {
        if token == LISTENER {
            return self.accept(registry, now);
        }
        let key = token.0 - BASE;
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        c.last = now;
        if c.serve(t).is_err() || (c.closing && c.out.is_empty()) {
            self.remove(key, registry);
        }
    }

    fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            let (mut sock, _) = match self.listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Out of descriptors: try again on the loop's next turn (no
                // new event would announce the ones already waiting).
                Err(_) => {
                    self.retry_accept = true;
                    return;
                }
            };
            if self.clients.len() >= MAX_CLIENTS {
                let _ = sock.shutdown(Shutdown::Both);
                continue;
            }
            let entry = self.clients.vacant_entry();
            let token = Token(BASE + entry.key());
            if registry
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                .is_ok()
            {
                entry.insert(Client {
                    sock,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    last: now,
                    closing: false,
                });
            }
        }
    }

    fn remove(&mut self, key: usize, registry: &Registry) {
        if let Some(mut c) = self.clients.try_remove(key) {
            let _ = registry.deregister(&mut c.sock);
            let _ = c.sock.shutdown(Shutdown::Both);
        }
    }

    /// When the next idle client is due to close.
    pub fn deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|(_, c)| c.last + IDLE).min()
    }

    /// Closes the clients idle since `IDLE` before `now`; retries a failed
    /// accept.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        if std::mem::take(&mut self.retry_accept) {
            self.accept(registry, now);
        }
        let idle: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| now >= c.last + IDLE)
            .map(|(k, _)| k)
            .collect();
        for k in idle {
            self.remove(k, registry);
        }
    }

    /// Closes everything (the server stops).
    pub fn close_all(&mut self, registry: &Registry) {
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.remove(k, registry);
        }
        let _ = registry.deregister(&mut self.listener);
    }
}

impl Client {
    /// Reads what there is, answers every complete request, writes what the
    /// socket takes. `Err`: the connection is done (closed, failed).
    fn serve(&mut self, t: &mut dyn Target) -> io::Result<()> {
        // Output first: a client that read its responses may be owed the
        // rest of its requests (already read, waiting in `inbuf`), and no
        // new event will say so.
        self.flush()?;
        self.answer(t);
        self.flush()?;
        let mut eof = false;
        let mut buf = [0u8; 16 * 1024];
        while !self.closing && self.out.len() < OUT_LIMIT {
            match self.sock.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    self.inbuf
                        .extend_from_slice(buf.get(..n).unwrap_or_default());
                    self.answer(t);
                    if self.inbuf.len() > MAX_IN {
                        // parse() refuses long heads and bodies first; this
                        // only bounds what a client sends after a close.
                        self.inbuf.clear();
                        self.closing = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.flush()?;
        if eof && self.out.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if eof {
            // Half-closed: answer what came, then close.
            self.closing = true;
        }
        Ok(())
    }

    fn answer(&mut self, t: &mut dyn Target) {
        // Past the limit, requests wait in `inbuf` until the client reads.
        while !self.closing && self.out.len() < OUT_LIMIT {
            match control::parse(&self.inbuf) {
                Parse::Partial => return,
                Parse::Bad(status, why) => {
                    Response::text(status, why).encode(true, &mut self.out);
                    self.inbuf.clear();
                    self.closing = true;
                }
                Parse::Complete(req, used) => {
                    self.inbuf.drain(..used);
                    let resp = control::route(&req, t);
                    self.closing = !req.keep_alive;
                    resp.encode_for(self.closing, req.http10, &mut self.out);
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.sock.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
