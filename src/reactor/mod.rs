//! The event loop: the only code that touches sockets.
//!
//! One mio `Poll`, a `Slab` of [`Conn`]s whose keys are their tokens, the
//! listeners and a waker (for shutdown) on reserved tokens at the top of the
//! token space. mio is edge-triggered, so each ready connection is served
//! until its input runs dry, but at most [`READ_BUDGET`] bytes per turn: a
//! connection that still has input goes to a still-ready queue served before
//! the next sleep, so one fast client cannot starve the others.
//!
//! Replies are queued while the ready connections are served and written
//! just before the loop sleeps, when all ready input has run dry: one `write`
//! per connection per turn, and never a reply held waiting for more input
//! (RFC 2920). WRITABLE interest exists only while output is pending.
//! Protocol problems never reach this layer as errors; an I/O error closes
//! that one connection. Only set-up errors are returned to `main`.

pub mod conn;
pub mod listener;

use crate::config::Config;
use crate::proto::server::{Ctx, Session, Settings, State, EXTENSION_ALLOWANCE};
use crate::sink::Sink;
use crate::stats::Stats;
use conn::{Conn, Drain, Flush, OUTPUT_HIGH_WATER};
pub use listener::ListenError;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read from one connection per turn before others get theirs.
pub const READ_BUDGET: usize = 256 * 1024;
/// Size of the shared read buffer: large reads make 1 MiB messages cheap.
const SCRATCH: usize = 64 * 1024;
const WAKER: Token = Token(usize::MAX);
/// Listener i has token `LISTENER_BASE - i`.
const LISTENER_BASE: usize = usize::MAX - 1;
/// How often idle deadlines are checked.
const TICK: Duration = Duration::from_millis(250);
/// How long a closing connection waits for the peer's FIN while it keeps
/// sending (see `Conn::discard_input`).
const LINGER: Duration = Duration::from_secs(2);

/// The session's view of the world for one call.
fn cx<'a>(
    out: &'a mut Vec<u8>,
    sink: &'a mut dyn Sink,
    stats: &'a mut Stats,
    now: Instant,
) -> Ctx<'a> {
    Ctx {
        out,
        sink,
        stats,
        now,
    }
}

/// Asks a running server to stop, from any thread (a signal handler thread,
/// a test). The first request drains gracefully; the second stops at once.
#[derive(Clone)]
pub struct ShutdownHandle {
    waker: Arc<Waker>,
    requests: Arc<AtomicUsize>,
}

impl ShutdownHandle {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        // A failed wake means the loop is gone already; nothing left to stop.
        let _ = self.waker.wake();
    }
}

/// A server running on its own thread.
pub struct Background<S> {
    /// The bound addresses.
    pub addrs: Vec<SocketAddr>,
    pub handle: ShutdownHandle,
    thread: std::thread::JoinHandle<io::Result<Report<S>>>,
}

impl<S> Background<S> {
    /// Waits for the server to finish (after a shutdown request).
    pub fn join(self) -> io::Result<Report<S>> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("server thread panicked")))
    }

    /// Requests a graceful shutdown and waits for it.
    pub fn stop(self) -> io::Result<Report<S>> {
        self.handle.request();
        self.join()
    }
}

/// What a finished run leaves behind.
pub struct Report<S> {
    pub stats: Stats,
    pub sink: S,
    pub elapsed: Duration,
}

/// Reactor knobs that are not protocol settings.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub timeout: Duration,
    pub grace: Duration,
    pub stats_interval: Option<Duration>,
    /// Non-blocking polls after a busy turn before the loop sleeps.
    pub spin_polls: u32,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Self {
            max_connections: c.max_connections as usize,
            timeout: c.timeout(),
            grace: c.grace(),
            stats_interval: c.stats_interval(),
            spin_polls: c.spin_polls,
        }
    }
}

pub struct Server<S: Sink> {
    poll: Poll,
    listeners: Vec<TcpListener>,
    local_addrs: Vec<SocketAddr>,
    conns: Slab<Conn>,
    settings: Settings,
    limits: Limits,
    sink: S,
    stats: Stats,
    scratch: Vec<u8>,
    still_ready: VecDeque<usize>,
    /// Connections with replies to write before the loop sleeps.
    to_flush: Vec<usize>,
    next_session: u64,
    accept_paused: bool,
    requests: Arc<AtomicUsize>,
    waker: Arc<Waker>,
    /// Set once a graceful shutdown began: the moment the grace period ends.
    draining_until: Option<Instant>,
}

impl<S: Sink> Server<S> {
    /// Binds every listen address. Nothing is accepted until [`Server::run`].
    pub fn bind(
        addrs: &[SocketAddr],
        backlog: i32,
        settings: Settings,
        limits: Limits,
        sink: S,
    ) -> Result<Self, ListenError> {
        let setup_err = |source: io::Error| ListenError {
            addr: addrs
                .first()
                .copied()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            source,
        };
        let poll = Poll::new().map_err(setup_err)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(setup_err)?);
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let mut l = listener::bind(*addr, backlog)?;
            poll.registry()
                .register(&mut l, Token(LISTENER_BASE - i), Interest::READABLE)
                .map_err(|source| ListenError {
                    addr: *addr,
                    source,
                })?;
            local_addrs.push(l.local_addr().unwrap_or(*addr));
            listeners.push(l);
        }
        // Room for the longest partial line we keep, plus a read.
        let scratch_len = SCRATCH.max(2 * (settings.max_line + EXTENSION_ALLOWANCE));
        Ok(Self {
            poll,
            listeners,
            local_addrs,
            conns: Slab::new(),
            settings,
            limits,
            sink,
            stats: Stats::new(),
            scratch: vec![0; scratch_len],
            still_ready: VecDeque::new(),
            to_flush: Vec::new(),
            next_session: 0,
            accept_paused: false,
            requests: Arc::new(AtomicUsize::new(0)),
            waker,
            draining_until: None,
        })
    }

    /// Binds as the configuration says.
    pub fn from_config(config: &Config, sink: S) -> Result<Self, ListenError> {
        Self::bind(
            &config.listen,
            config.backlog,
            config.settings(),
            Limits::from(config),
            sink,
        )
    }

    /// Runs the server on a thread of its own (tests, embedding).
    pub fn spawn(self) -> Background<S>
    where
        S: Send + 'static,
    {
        let addrs = self.local_addrs.clone();
        let handle = self.shutdown_handle();
        let thread = std::thread::spawn(move || self.run());
        Background {
            addrs,
            handle,
            thread,
        }
    }

    /// The bound addresses (with the real port when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            waker: Arc::clone(&self.waker),
            requests: Arc::clone(&self.requests),
        }
    }

    /// Runs until shut down; returns the statistics and the sink.
    pub fn run(mut self) -> io::Result<Report<S>> {
        let started = Instant::now();
        let mut events = Events::with_capacity(1024);
        let mut next_tick = started + TICK;
        let mut next_report = self
            .limits
            .stats_interval
            .map(|i| (started + i, self.stats.counters));
        // Non-blocking polls left before the loop may sleep again.
        let mut spins_left = 0u32;
        loop {
            self.flush_queued(Instant::now());
            if !events.is_empty() {
                spins_left = self.limits.spin_polls;
            }
            let timeout = if !self.still_ready.is_empty() || spins_left > 0 {
                // Busy-poll briefly after work (--spin-polls): on loopback
                // the next request often comes within microseconds, and a
                // sleeping receiver makes the sender's write pay for its
                // wake-up (smtp-source used 15% more CPU against smtpsink).
                spins_left = spins_left.saturating_sub(1);
                Some(Duration::ZERO)
            } else {
                Some(next_tick.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let now = Instant::now();
            for ev in &events {
                match ev.token() {
                    WAKER => {}
                    Token(t) if t > LISTENER_BASE - self.listeners.len() && t <= LISTENER_BASE => {
                        self.accept(LISTENER_BASE - t, now);
                    }
                    Token(key) => {
                        self.serve(key, now, ev.is_read_closed() || ev.is_error());
                    }
                }
            }
            // Connections left with input after their budget, in arrival order.
            for _ in 0..self.still_ready.len() {
                if let Some(key) = self.still_ready.pop_front() {
                    self.serve(key, now, true);
                }
            }

            match self.requests.load(Ordering::SeqCst) {
                0 => {}
                1 if self.draining_until.is_none() => self.begin_drain(now),
                1 => {}
                _ => {
                    self.close_all(now);
                    break;
                }
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.expire(now);
                if self.accept_paused {
                    self.resume_accepting(now);
                }
                if let Some((at, prev)) = next_report {
                    if now >= at {
                        let interval = self.limits.stats_interval.unwrap_or(TICK);
                        eprintln!(
                            "{}",
                            self.stats.interval_line(&prev, now - started, interval)
                        );
                        next_report = Some((at + interval, self.stats.counters));
                    }
                }
            }
            if let Some(until) = self.draining_until {
                if self.conns.is_empty() {
                    break;
                }
                if now >= until {
                    self.close_all(now);
                    break;
                }
            }
        }
        Ok(Report {
            stats: self.stats,
            sink: self.sink,
            elapsed: started.elapsed(),
        })
    }

    fn accept(&mut self, index: usize, now: Instant) {
        loop {
            if self.conns.len() >= self.limits.max_connections {
                // The rest wait in the kernel's backlog until one closes.
                self.accept_paused = true;
                return;
            }
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let (mut sock, _peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(_) => {
                    // EMFILE, ENFILE, ENOBUFS: retry on the next tick.
                    self.accept_paused = true;
                    return;
                }
            };
            // Small replies must leave at once; Nagle would hold them.
            let _ = sock.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if self
                .poll
                .registry()
                .register(&mut sock, Token(key), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            self.next_session += 1;
            let mut conn = Conn::new(sock, Session::new(self.next_session), now);
            conn.session.greet(
                &self.settings,
                &mut cx(&mut conn.out, &mut self.sink, &mut self.stats, now),
            );
            entry.insert(conn);
            self.stats.counters.connections += 1;
            self.stats.counters.connections_open += 1;
            // The client may already have sent something; serve() reads it
            // and writes the greeting first.
            self.serve(key, now, false);
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        if self.draining_until.is_some() {
            return;
        }
        self.accept_paused = false;
        for i in 0..self.listeners.len() {
            self.accept(i, now);
        }
    }

    /// Serves one connection: flush what is left, then read and process up
    /// to the budget; the replies are queued for the flush before sleep.
    /// `drain`: read until WouldBlock even after a short read (the event said
    /// the peer closed or errored, or this is a retry from a queue).
    fn serve(&mut self, key: usize, now: Instant, drain: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.lingering_until.is_some() {
            if conn.discard_input(&mut self.scratch) == Drain::Eof {
                self.finish_close(key, now);
            }
            return;
        }
        let c = &mut self.stats.counters;
        if conn.has_output()
            && conn.flush(&mut c.write_calls, &mut c.bytes_out, now) == Flush::Failed
        {
            return self.close(key, now);
        }
        let mut budget = READ_BUDGET;
        let mut eof = false;
        conn.read_paused = false;
        loop {
            if conn.out.len() - conn.out_pos >= OUTPUT_HIGH_WATER {
                // Resumed by the flush once the client has taken its replies.
                conn.read_paused = true;
                break;
            }
            if matches!(conn.session.state(), State::Closed | State::AwaitVerdict) {
                break;
            }
            if budget == 0 {
                self.still_ready.push_back(key);
                break;
            }
            // Carried-over bytes go first, then as much as the socket has.
            let carried = conn.carry.len();
            let Some(space) = self.scratch.get_mut(carried..).filter(|s| !s.is_empty()) else {
                break;
            };
            let n = match conn.read(space) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            };
            let filled = space.len() == n;
            self.stats.counters.read_calls += 1;
            self.stats.counters.bytes_in += n as u64;
            budget = budget.saturating_sub(n);
            conn.last_active = now;
            if let Some(head) = self.scratch.get_mut(..carried) {
                head.copy_from_slice(&conn.carry);
            }
            let input = self.scratch.get(..carried + n).unwrap_or_default();
            let used = conn.session.handle_input(
                &self.settings,
                input,
                &mut cx(&mut conn.out, &mut self.sink, &mut self.stats, now),
            );
            conn.carry.clear();
            conn.carry
                .extend_from_slice(input.get(used..).unwrap_or_default());
            // A read that did not fill the buffer drained the socket: on Linux,
            // edge-triggered epoll reports every later arrival, so the read
            // that would only say WouldBlock is skipped. Not when the event
            // also reported the peer's FIN: no later event would come for it.
            if !filled && !drain && cfg!(target_os = "linux") {
                break;
            }
        }
        if eof {
            // A client may half-close after its last command: it still gets
            // the replies to what it sent; the flush closes the connection.
            conn.session
                .disconnected(&mut cx(&mut conn.out, &mut self.sink, &mut self.stats, now));
        }
        // Replies wait for the end of this turn of the loop, when every ready
        // connection's input has run dry (flush before sleep, as Redis does).
        if !conn.flush_queued && (conn.has_output() || conn.session.is_closed()) {
            conn.flush_queued = true;
            self.to_flush.push(key);
        }
    }

    /// Writes every queued connection's replies: one write per connection per
    /// turn, after all ready input was processed. Closes finished sessions and
    /// keeps WRITABLE interest only where output is left.
    fn flush_queued(&mut self, now: Instant) {
        // Closing a connection may accept a waiting one, whose greeting
        // queues a new flush: repeat until nothing is left.
        while !self.to_flush.is_empty() {
            self.flush_batch(now);
        }
    }

    fn flush_batch(&mut self, now: Instant) {
        let mut keys = std::mem::take(&mut self.to_flush);
        for &key in &keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.flush_queued = false;
            let c = &mut self.stats.counters;
            match conn.flush(&mut c.write_calls, &mut c.bytes_out, now) {
                Flush::Failed => self.close(key, now),
                Flush::Done if conn.session.is_closed() => self.close(key, now),
                Flush::Done if conn.read_paused => {
                    // Reading stopped at the output high-water mark; input may
                    // still sit in the socket with no event left to report it.
                    conn.read_paused = false;
                    self.still_ready.push_back(key);
                    if conn.want_write {
                        conn.want_write = false;
                        let _ = self.poll.registry().reregister(
                            &mut conn.sock,
                            Token(key),
                            Interest::READABLE,
                        );
                    }
                }
                Flush::Done if conn.want_write => {
                    conn.want_write = false;
                    let _ = self.poll.registry().reregister(
                        &mut conn.sock,
                        Token(key),
                        Interest::READABLE,
                    );
                }
                Flush::Blocked if !conn.want_write => {
                    conn.want_write = true;
                    let _ = self.poll.registry().reregister(
                        &mut conn.sock,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                }
                Flush::Done | Flush::Blocked => {}
            }
        }
        // Keep the allocation for the next turn.
        keys.clear();
        if self.to_flush.is_empty() {
            self.to_flush = keys;
        }
    }

    /// Ends the session and closes the connection: FIN after the last
    /// reply, then, if the peer is still sending, a short linger that reads
    /// until its FIN so that our close does not reset away unread replies.
    fn close(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.lingering_until.is_some() {
            return;
        }
        conn.session
            .disconnected(&mut cx(&mut conn.out, &mut self.sink, &mut self.stats, now));
        self.sink.closed(conn.session.id());
        conn.shutdown_write();
        match conn.discard_input(&mut self.scratch) {
            Drain::More => conn.lingering_until = Some(now + LINGER),
            Drain::Eof | Drain::Empty => self.finish_close(key, now),
        }
    }

    fn finish_close(&mut self, key: usize, now: Instant) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        self.stats.counters.connections_open -= 1;
        if self.accept_paused {
            self.resume_accepting(now);
        }
    }

    /// Sends `421` with `reply` to `key`, flushes what the socket takes, closes.
    fn close_with(&mut self, key: usize, reply: &[u8], now: Instant) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.session.close_with(
                reply,
                &mut cx(&mut conn.out, &mut self.sink, &mut self.stats, now),
            );
            let c = &mut self.stats.counters;
            conn.flush(&mut c.write_calls, &mut c.bytes_out, now);
        }
        self.close(key, now);
    }

    /// Idle connections past the timeout get 421 4.4.2; lingering ones past
    /// their deadline are closed.
    fn expire(&mut self, now: Instant) {
        let lingered: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.lingering_until.is_some_and(|t| now >= t))
            .map(|(k, _)| k)
            .collect();
        for key in lingered {
            self.finish_close(key, now);
        }
        let timeout = self.limits.timeout;
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.lingering_until.is_none()
                    && now.saturating_duration_since(c.last_active) >= timeout
            })
            .map(|(k, _)| k)
            .collect();
        let reply = self.settings.rendered.timeout.clone();
        for key in expired {
            self.stats.counters.timeouts += 1;
            self.close_with(key, &reply, now);
        }
    }

    /// First shutdown request: stop accepting; 421 to every session not in
    /// the middle of a message; the others finish within the grace period.
    fn begin_drain(&mut self, now: Instant) {
        self.draining_until = Some(now + self.limits.grace);
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.session.in_message() && c.lingering_until.is_none())
            .map(|(k, _)| k)
            .collect();
        // The rest end with 421 as soon as their message is answered.
        for (_, c) in self.conns.iter_mut() {
            c.session.close_after_message();
        }
        let reply = self.settings.rendered.shutdown.clone();
        for key in idle {
            self.close_with(key, &reply, now);
        }
    }

    fn close_all(&mut self, now: Instant) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        let reply = self.settings.rendered.shutdown.clone();
        for key in keys {
            self.close_with(key, &reply, now);
            // No lingering when stopping for good.
            self.finish_close(key, now);
        }
    }
}
