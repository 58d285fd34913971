//! One client connection: its link (transport and buffers), its session, and
//! where it is in its life.
//!
//! This is the glue between readiness and the protocol: it turns events into
//! the session's semantic events (bytes in, replies taken, deadline passed,
//! verdict arrived, closed) and acts on the session's [`Request`] after each
//! one. The event loop above only sees [`Next`]: wait, serve again, remove.
//!
//! Replies go into the loop's shared output buffer and are written at the end
//! of each serve, when this connection's input has run dry: one write per
//! pipelined batch (RFC 2920), and a connection whose client keeps up never
//! holds an output allocation. Only what the socket refuses is kept (in the
//! link). Once that passes [`OUTPUT_HIGH_WATER`] the session stops answering,
//! even in the middle of a batch: the rest of the batch waits in the carry
//! and the rest of the input in the kernel, until the client reads.

use super::{Env, LINGER};
use crate::net::{Consumed, Drain, Flush, Keep, Link, ReadEnd, TlsFailure, Transport};
use crate::proto::proxy::{self, Parsed};
use crate::proto::reply::ReplyId;
use crate::proto::server::{Ctx, Policy, Request, Session, Verdict};
use mio::{Interest, Registry, Token};
use std::io;
use std::time::Instant;

/// Unsent output above this pauses the session: a client that never reads
/// cannot grow us. Per connection we then hold at most this much output,
/// plus one reply, plus one read buffer of unanswered input.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// Bytes read from one connection per turn before others get theirs.
pub const READ_BUDGET: usize = 256 * 1024;
/// Empty buffers bigger than this are released: a partial command line fits.
const KEEP: Keep = Keep {
    carry: 1024,
    out: 0,
};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Reading and answering.
    Open,
    /// Not reading: unsent output passed the high-water mark. Resumes when
    /// the client has taken all of it.
    Backlogged,
    /// Not reading: the session waits for a verdict or a held reply's time.
    Parked,
    /// Not reading: STARTTLS was answered; once the 220 is written the
    /// transport is secured.
    Securing,
    /// The session ended: writing what is left, then closing; at most until then.
    Closing { until: Instant },
    /// FIN sent: reading until the client's FIN, at most until then, so our
    /// close does not reset away replies it has not read.
    Lingering { until: Instant },
    /// Reading a PROXY header, at most until then; no greeting before it.
    /// `tls`: the listener speaks implicit TLS after the header.
    Proxying { until: Instant, tls: bool },
}

/// What the loop does with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing until its next event, deadline or completion.
    Wait,
    /// Serve it again before the loop sleeps (budget spent, or resumed).
    Again,
    /// Closed: remove it.
    Remove,
}

/// One connection: link, session, life.
pub struct Conn {
    link: Link,
    session: Session,
    life: Life,
    /// Input read earlier is waiting in the carry for a session that stopped
    /// taking it: offer it before reading (no event will announce it again).
    replay: bool,
    /// What the loop's timers hold for this connection, so a deadline that
    /// is not sooner costs a comparison, not a heap lookup.
    armed: Option<Instant>,
    /// A TLS handshake is under way, since then.
    tls_since: Option<Instant>,
    /// Counted against its client's connection limit (a proxied one is once
    /// its header named the client).
    counted: bool,
    /// The address it was counted under (XCLIENT may name another client
    /// later; the count taken is the count given back).
    counted_as: std::net::IpAddr,
}

/// Calls `f` with the session and a context over `env`, limited to what the
/// output high-water mark leaves.
macro_rules! with_cx {
    ($env:expr, $limit:expr, |$cx:ident| $body:expr) => {{
        let interest = $env.policy.as_deref().and_then(Policy::interest);
        let mut ctx = Ctx::new(&mut *$env.out, &mut *$env.sink, &mut *$env.stats, $env.now);
        ctx.out_limit = $limit;
        ctx.asks = $env.policy.as_deref().map_or(0, Policy::stages);
        ctx.generation = $env.policy.as_deref().map_or(0, Policy::generation);
        ctx.tally = Some(&mut *$env.tally);
        ctx.interest = interest.as_deref();
        ctx.policy = $env.policy.as_deref_mut().map(|p| p as &mut dyn Policy);
        let $cx = &mut ctx;
        $body
    }};
}

impl Conn {
    /// A connection over `transport` (not registered yet) for `session`.
    pub fn new(transport: Transport, session: Session) -> Self {
        Self {
            link: Link::new(transport, KEEP),
            counted_as: session.peer().ip(),
            session,
            life: Life::Open,
            replay: false,
            armed: None,
            tls_since: None,
            counted: true,
        }
    }

    /// A connection over a transport that is TLS from its first byte
    /// (implicit TLS), accepted at `now`.
    pub fn new_tls(transport: Transport, mut session: Session, now: Instant) -> Self {
        session.secure_from_start();
        let mut c = Self::new(transport, session);
        c.tls_since = Some(now);
        c
    }

    /// Registers for READABLE; WRITABLE is added only while output is pending.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.link.register(registry, token, Interest::READABLE)
    }

    /// Its session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whether the loop must arm `at` for this connection: only when it is
    /// sooner than what is armed. Records it.
    #[inline]
    pub fn needs_arming(&mut self, at: Instant) -> bool {
        if self.armed.is_some_and(|armed| armed <= at) {
            return false;
        }
        self.armed = Some(at);
        true
    }

    /// The loop's timer for this connection fired: nothing is armed now.
    pub fn disarmed(&mut self) {
        self.armed = None;
    }

    /// When the loop must call [`Conn::on_timer`] next.
    pub fn deadline(&self, env: &Env<'_>) -> Option<Instant> {
        self.closing_until()
            .or_else(|| self.session.deadline(env.settings))
    }

    /// The deadline of what is in progress, which may be sooner than the
    /// one armed (see `Session::short_deadline`).
    #[inline]
    pub fn short_deadline(&self, env: &Env<'_>) -> Option<Instant> {
        self.closing_until()
            .or_else(|| self.session.short_deadline(env.settings))
    }

    /// A closing or lingering connection's own deadline (and a proxied
    /// one's header's): the session's clocks do not count.
    #[inline]
    fn closing_until(&self) -> Option<Instant> {
        match self.life {
            Life::Closing { until } | Life::Lingering { until } | Life::Proxying { until, .. } => {
                Some(until)
            }
            Life::Open | Life::Backlogged | Life::Parked | Life::Securing => None,
        }
    }

    /// The address it counts under against its client's connection limit,
    /// if it counts.
    pub fn counted(&self) -> Option<std::net::IpAddr> {
        self.counted.then_some(self.counted_as)
    }

    /// Accepted with `--proxy-protocol`: the PROXY header comes first, by
    /// `until`; then the session starts as [`Conn::start`] starts it, for
    /// the client the header names (TLS first when `tls`).
    pub fn await_proxy(
        &mut self,
        token: Token,
        until: Instant,
        tls: bool,
        env: &mut Env<'_>,
    ) -> Next {
        self.life = Life::Proxying { until, tls };
        self.counted = false;
        self.read_proxy(token, false, env)
    }

    /// Reads the PROXY header as far as it has come.
    fn read_proxy(&mut self, token: Token, drain: bool, env: &mut Env<'_>) -> Next {
        let Life::Proxying { tls, .. } = self.life else {
            return Next::Wait;
        };
        let mut got = None;
        let mut io = env.stats.counters.io;
        let end = self
            .link
            .read_with(
                env.scratch,
                READ_BUDGET,
                drain,
                &mut io,
                |input, _| match proxy::parse(input) {
                    Parsed::Partial => Consumed {
                        used: 0,
                        stop: false,
                    },
                    Parsed::Header { len, client } => {
                        got = Some(Some(client));
                        Consumed {
                            used: len,
                            stop: true,
                        }
                    }
                    Parsed::Invalid(_) => {
                        got = Some(None);
                        Consumed {
                            used: 0,
                            stop: true,
                        }
                    }
                },
            );
        env.stats.counters.io = io;
        match got {
            Some(Some(client)) => {
                if tls {
                    let Some(conn) = env.tls.and_then(|config| {
                        let config = std::sync::Arc::clone(config);
                        rustls::server::UnbufferedServerConnection::new(config).ok()
                    }) else {
                        return Next::Remove;
                    };
                    // What came after the header is the client's first
                    // TLS records.
                    self.link.start_tls_after_preamble(conn);
                    self.session.secure_from_start();
                    self.tls_since = Some(env.now);
                }
                if let Some(client) = client {
                    self.session.set_peer(client);
                }
                self.life = Life::Open;
                self.counted = true;
                self.counted_as = self.session.peer().ip();
                let admitted = env.clients.arrive(self.counted_as);
                // Anything sent after the header waits in the carry.
                self.replay = self.link.carried() > 0;
                self.start_reading(token, admitted, drain, env)
            }
            Some(None) => {
                env.stats.counters.proxy_refused += 1;
                self.close(token, env, true)
            }
            None if end == ReadEnd::Closed => {
                // Part of a header, then the end (a bare connect and close,
                // a health check, is not a refusal).
                if self.link.carried() > 0 {
                    env.stats.counters.proxy_refused += 1;
                }
                Next::Remove
            }
            None => Next::Wait,
        }
    }

    /// The connection was accepted: greet (or, when `admitted` is false,
    /// refuse with 421 4.7.0) and read whatever the client already sent.
    pub fn start(&mut self, token: Token, admitted: bool, env: &mut Env<'_>) -> Next {
        self.start_reading(token, admitted, false, env)
    }

    /// [`Conn::start`] during a readiness event that may also have said the
    /// peer closed (`drain`: no later event repeats that).
    fn start_reading(
        &mut self,
        token: Token,
        admitted: bool,
        drain: bool,
        env: &mut Env<'_>,
    ) -> Next {
        let s = env.settings;
        if admitted {
            with_cx!(env, usize::MAX, |cx| self.session.start(s, cx));
            if !self.session.takes_input() {
                // A rule refused, closed or delayed the greeting.
                return self.after_event(token, env, false);
            }
            self.pump(token, drain, env)
        } else {
            env.stats.counters.connections_refused += 1;
            with_cx!(env, usize::MAX, |cx| self.session.close_with(
                s,
                ReplyId::TooManyConnections,
                cx
            ));
            self.after_event(token, env, false)
        }
    }

    /// A readiness event (readable, writable, or the peer closed: `drain`).
    pub fn serve(&mut self, token: Token, drain: bool, env: &mut Env<'_>) -> Next {
        match self.life {
            Life::Proxying { .. } => self.read_proxy(token, drain, env),
            Life::Lingering { .. } => match self.link.discard_input(env.scratch) {
                Drain::Eof => Next::Remove,
                Drain::Empty => Next::Wait,
                // More may already be buffered with the FIN behind it: no new
                // event would announce it, so look again this turn.
                Drain::More => Next::Again,
            },
            Life::Closing { .. } => match self.flush(token, env) {
                Flush::Done => self.close(token, env, false),
                Flush::Blocked => Next::Wait,
                Flush::Failed => Next::Remove,
            },
            Life::Parked => match self.flush(token, env) {
                Flush::Failed => Next::Remove,
                Flush::Done | Flush::Blocked => Next::Wait,
            },
            Life::Securing => match self.flush(token, env) {
                Flush::Done => self.secure(token, env),
                Flush::Blocked => Next::Wait,
                Flush::Failed => Next::Remove,
            },
            Life::Backlogged => match self.flush(token, env) {
                // Everything taken: answer the rest of the batch, then read
                // until the socket is dry (its events were not acted on).
                Flush::Done => {
                    self.life = Life::Open;
                    self.pump(token, true, env)
                }
                Flush::Blocked => Next::Wait,
                Flush::Failed => Next::Remove,
            },
            Life::Open => match self.flush(token, env) {
                Flush::Failed => Next::Remove,
                Flush::Done | Flush::Blocked => self.pump(token, drain, env),
            },
        }
    }

    /// Its armed time came; that may be earlier than any deadline it has
    /// now (arming keeps the earliest), and nothing is done before its time.
    pub fn on_timer(&mut self, token: Token, env: &mut Env<'_>) -> Next {
        match self.life {
            Life::Closing { until } | Life::Lingering { until } if env.now < until => Next::Wait,
            Life::Proxying { until, .. } if env.now < until => Next::Wait,
            Life::Closing { .. } | Life::Lingering { .. } => Next::Remove,
            Life::Proxying { .. } => {
                // No header in time: closed unanswered.
                env.stats.counters.proxy_refused += 1;
                Next::Remove
            }
            Life::Open | Life::Backlogged | Life::Parked | Life::Securing => {
                let s = env.settings;
                let timed_out = with_cx!(env, usize::MAX, |cx| self.session.on_timer(s, cx));
                // A timeout's close does not wait for a client that may not
                // be reading; a held reply's (a delayed 221) does.
                self.after_event(token, env, timed_out.is_some())
            }
        }
    }

    /// The sink's verdict on this connection's message arrived.
    pub fn complete(&mut self, token: Token, verdict: Verdict, env: &mut Env<'_>) -> Next {
        if self.life != Life::Parked {
            return Next::Wait;
        }
        let s = env.settings;
        with_cx!(env, usize::MAX, |cx| self.session.complete(s, verdict, cx));
        self.after_event(token, env, false)
    }

    /// The server is shutting down (first request): 421 now, or after the
    /// message in progress.
    pub fn shutdown(&mut self, token: Token, env: &mut Env<'_>) -> Next {
        if matches!(self.life, Life::Closing { .. } | Life::Lingering { .. }) {
            return Next::Wait;
        }
        if matches!(self.life, Life::Proxying { .. }) {
            // Never greeted: nothing to say.
            return Next::Remove;
        }
        let s = env.settings;
        with_cx!(env, usize::MAX, |cx| self.session.shutdown(s, cx));
        self.after_event(token, env, false)
    }

    /// Ends the session at once with `reply` and writes what the socket
    /// takes (second shutdown request, or the grace period is over).
    pub fn abort(&mut self, reply: ReplyId, env: &mut Env<'_>) {
        if matches!(self.life, Life::Proxying { .. }) {
            return;
        }
        let s = env.settings;
        with_cx!(env, usize::MAX, |cx| self.session.close_with(s, reply, cx));
        let _ = self.link.send(env.out, &mut env.stats.counters.io);
        env.out.clear();
    }

    /// Removed from the loop: tell the session (and so the sink) and
    /// unregister.
    pub fn finish(&mut self, env: &mut Env<'_>) {
        if let Some(why) = self.link.transport().tls_failure() {
            env.stats.tls.failure(why);
        } else if self.tls_since.is_some() {
            env.stats.tls.failure(TlsFailure::Abandoned);
        }
        if self.counted {
            // (A proxied connection whose header never came never started.)
            with_cx!(env, usize::MAX, |cx| self.session.disconnected(cx));
        }
        env.out.clear();
        self.link.deregister(env.registry);
    }

    /// After a timer, verdict or shutdown event: write what the session
    /// said and act on its request.
    fn after_event(&mut self, token: Token, env: &mut Env<'_>, force_close: bool) -> Next {
        let sent = self.link.send(env.out, &mut env.stats.counters.io);
        env.out.clear();
        if sent == Flush::Failed {
            return Next::Remove;
        }
        match self.session.take_request() {
            Some(Request::Close) => self.close(token, env, force_close),
            Some(Request::Await | Request::Hold { .. }) => {
                self.life = Life::Parked;
                self.want_write(token, env);
                Next::Wait
            }
            Some(Request::StartTls) => {
                if self.link.pending() > 0 {
                    // The 220 must leave in plaintext before TLS begins.
                    self.life = Life::Securing;
                    self.want_write(token, env);
                    return Next::Wait;
                }
                self.secure(token, env)
            }
            None => self.resume(token, env),
        }
    }

    /// STARTTLS: the 220 is written; input read after the command is
    /// dropped unread (RFC 3207 4.2), the transport becomes TLS, and the
    /// session starts over. The client may already have sent its hello, and
    /// no new event will say so: read now.
    fn secure(&mut self, token: Token, env: &mut Env<'_>) -> Next {
        let Some(conn) = env.tls.and_then(|config| {
            rustls::server::UnbufferedServerConnection::new(std::sync::Arc::clone(config)).ok()
        }) else {
            // The session offers STARTTLS only with a configuration.
            return self.close(token, env, true);
        };
        self.link.start_tls(conn);
        self.replay = false;
        self.tls_since = Some(env.now);
        self.life = Life::Open;
        let s = env.settings;
        with_cx!(env, usize::MAX, |cx| self.session.secured(s, cx));
        self.pump(token, true, env)
    }

    /// The handshake may have finished during the last read: count it.
    fn note_handshake(&mut self, env: &mut Env<'_>) {
        let (Some(since), Some(info)) = (self.tls_since, self.link.transport().tls_info()) else {
            return;
        };
        self.tls_since = None;
        env.stats
            .tls
            .handshake(info, env.now.saturating_duration_since(since));
    }

    /// The session takes input: a parked connection reads again, and so does
    /// a backlogged one whose output has all been written (by whichever
    /// event wrote it). What was read meanwhile waits in the carry, the rest
    /// in the socket; no event will announce either, so serve it now.
    fn resume(&mut self, token: Token, env: &mut Env<'_>) -> Next {
        self.want_write(token, env);
        let ready = match self.life {
            Life::Parked => true,
            Life::Backlogged => self.link.pending() == 0,
            Life::Open
            | Life::Securing
            | Life::Closing { .. }
            | Life::Lingering { .. }
            | Life::Proxying { .. } => false,
        };
        if !ready {
            return Next::Wait;
        }
        self.life = Life::Open;
        self.replay = true;
        Next::Again
    }

    /// Reads and answers until the input runs dry, the budget is spent, the
    /// output passes the mark, or the session asks for something.
    fn pump(&mut self, token: Token, drain: bool, env: &mut Env<'_>) -> Next {
        let mut budget = READ_BUDGET;
        loop {
            let (s, now) = (env.settings, env.now);
            let limit = OUTPUT_HIGH_WATER.saturating_sub(self.link.pending());
            let session = &mut self.session;
            let out = &mut *env.out;
            let (sink, stats, tally) = (&mut *env.sink, &mut *env.stats, &mut *env.tally);
            let policy = &mut env.policy;
            // Read once per serve, statically: the closure runs per read.
            let asks = policy.as_deref().map_or(0, Policy::stages);
            let generation = policy.as_deref().map_or(0, Policy::generation);
            let interest = policy.as_deref().and_then(Policy::interest);
            let mut io = stats.counters.io;
            let before = io.bytes_in;
            let mut parked = false;
            let mut take = |input: &[u8], _: &mut Vec<u8>| {
                let mut cx = Ctx::new(&mut *out, &mut *sink, &mut *stats, now);
                cx.out_limit = limit;
                cx.asks = asks;
                cx.generation = generation;
                cx.tally = Some(&mut *tally);
                cx.interest = interest.as_deref();
                cx.policy = policy.as_deref_mut().map(|p| p as &mut dyn Policy);
                let used = session.handle_input(s, input, &mut cx);
                parked = !session.takes_input();
                let stop = parked || cx.out.len() >= limit;
                Consumed { used, stop }
            };
            let end = if std::mem::take(&mut self.replay) && self.link.replay(&mut take) {
                ReadEnd::Stopped
            } else {
                self.link
                    .read_with(env.scratch, budget, drain, &mut io, take)
            };
            budget =
                budget.saturating_sub(usize::try_from(io.bytes_in - before).unwrap_or(usize::MAX));
            if self.tls_since.is_some() {
                self.note_handshake(env);
            }
            let sent = self.link.send(env.out, &mut io);
            env.stats.counters.io = io;
            env.out.clear();
            if sent == Flush::Failed {
                return Next::Remove;
            }
            if parked {
                self.replay = self.link.carried() > 0;
                return self.after_event(token, env, false);
            }
            match end {
                ReadEnd::Stopped
                    if self.link.pending() >= OUTPUT_HIGH_WATER || sent == Flush::Blocked =>
                {
                    // The client is not reading: wait until it has taken it all.
                    self.life = Life::Backlogged;
                    self.replay = self.link.carried() > 0;
                    self.want_write(token, env);
                    return Next::Wait;
                }
                // The kernel took the output: answer the rest of the batch.
                ReadEnd::Stopped => self.replay = true,
                ReadEnd::Budget => {
                    self.want_write(token, env);
                    return Next::Again;
                }
                ReadEnd::Drained => {
                    self.want_write(token, env);
                    return Next::Wait;
                }
                ReadEnd::Closed => {
                    // A client may half-close after its last command: it
                    // still gets the replies to what it sent. The session
                    // hears of it when the connection is removed.
                    return self.close(token, env, false);
                }
            }
        }
    }

    /// Writes pending output; a client taking replies is not idle.
    // The check inline, the rest out of line: most events find nothing
    // pending (measured with callgrind: ~20 instructions a message).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn flush(&mut self, token: Token, env: &mut Env<'_>) -> Flush {
        if self.link.pending() == 0 {
            return Flush::Done;
        }
        self.flush_pending(token, env)
    }

    fn flush_pending(&mut self, token: Token, env: &mut Env<'_>) -> Flush {
        let before = env.stats.counters.io.bytes_out;
        let f = self.link.flush(&mut env.stats.counters.io);
        if env.stats.counters.io.bytes_out > before {
            self.session.wrote(env.now);
        }
        self.want_write(token, env);
        f
    }

    /// WRITABLE interest exactly while output is pending.
    fn want_write(&mut self, token: Token, env: &Env<'_>) {
        let on = self.link.pending() > 0;
        self.link.want_write(env.registry, token, on);
    }

    /// The session is over: once its output is written (or at once, when
    /// `force`), send FIN; then linger while the client keeps sending.
    fn close(&mut self, token: Token, env: &mut Env<'_>, force: bool) -> Next {
        if self.link.pending() > 0 && !force {
            if !matches!(self.life, Life::Closing { .. }) {
                let until = env
                    .now
                    .checked_add(env.settings.timeouts.idle)
                    .unwrap_or(env.now);
                self.life = Life::Closing { until };
            }
            self.want_write(token, env);
            return Next::Wait;
        }
        self.link.shutdown_write();
        match self.link.discard_input(env.scratch) {
            Drain::More => {
                self.life = Life::Lingering {
                    until: env.now + LINGER,
                };
                // More may be buffered with the FIN behind it: look again.
                Next::Again
            }
            Drain::Eof | Drain::Empty => Next::Remove,
        }
    }
}
