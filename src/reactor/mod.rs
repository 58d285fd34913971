//! The event loop: the only code that touches sockets.
//!
//! One mio `Poll`, a `Slab` of `Conn`s whose keys are their tokens, the
//! listeners and one waker (shutdown requests and completions) on reserved
//! tokens at the top of the token space. [`Server::run`] is the whole loop
//! and reads like Redis's `aeMain`: sleep until the next event or deadline,
//! fire file events, serve connections left ready, fire completions, fire
//! timers, run the tick hook, take shutdown steps. It knows nothing about
//! SMTP: connections (`conn`) turn events into the session's events, the
//! [`timer`] module keeps deadlines and reads the clock, `clients` counts
//! connections per address.
//!
//! mio is edge-triggered, so each ready connection is served until its input
//! runs dry, but at most [`conn::READ_BUDGET`] bytes per turn: a connection
//! that still has input goes to a still-ready queue served before the loop
//! sleeps, so one fast client cannot starve the others. Protocol problems
//! never reach this layer as errors; an I/O error closes that one connection.
//! Only set-up errors are returned to `main`.
//!
//! Other threads reach a running loop only through its [`Ask`] queue
//! (`--threads`: snapshots of its figures, new rules, a reset), answered
//! between turns; a turn with none asked costs one atomic load.

mod clients;
mod conn;
pub mod control;
pub mod listener;
pub mod timer;

use crate::completion::{Completer, Completions};
use crate::config::Config;
use crate::metrics::Exposition;
use crate::net::Stream;
use crate::net::Transport;
use crate::proto::reply::ReplyId;
use crate::proto::server::{Session, SessionId, Settings, Sink, Tally, EXTENSION_ALLOWANCE};
use crate::rules::{spec, Engine};
use crate::sink::Summary;
use crate::stats::Stats;
use clients::Clients;
use conn::{Conn, Next};
pub use conn::{OUTPUT_HIGH_WATER, READ_BUDGET};
use control::ControlPort;
use ipnet::IpNet;
pub use listener::ListenError;
use listener::Listener;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timer::Timers;

/// Size of the shared read buffer: large reads make 1 MiB messages cheap.
const SCRATCH: usize = 64 * 1024;
const WAKER: Token = Token(usize::MAX);
/// Listener i has token `LISTENER_BASE - i`.
const LISTENER_BASE: usize = usize::MAX - 1;
/// How long a closing connection waits for the peer's FIN while it keeps
/// sending (see `Link::discard_input`).
const LINGER: Duration = Duration::from_secs(2);
/// After accept fails for want of descriptors, try again this much later.
const ACCEPT_RETRY: Duration = Duration::from_millis(250);

/// Asks a running server to stop, from any thread (a signal handler thread,
/// a test). The first request drains gracefully; the second stops at once.
#[derive(Clone)]
pub struct ShutdownHandle {
    waker: Arc<Waker>,
    requests: Arc<AtomicUsize>,
}

impl ShutdownHandle {
    /// Asks for a shutdown: graceful the first time, immediate the second.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        // A failed wake means the loop is gone already; nothing left to stop.
        let _ = self.waker.wake();
    }

    /// Asks for a graceful shutdown unless one was asked for already (so it
    /// never turns a drain in progress into an immediate stop).
    pub fn request_graceful(&self) {
        if self
            .requests
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let _ = self.waker.wake();
        }
    }
}

/// A server running on its own thread.
pub struct Background<S> {
    /// The bound addresses.
    pub addrs: Vec<SocketAddr>,
    /// Stops it.
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

    /// Whether the loop has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Requests a graceful shutdown and waits for it.
    pub fn stop(self) -> io::Result<Report<S>> {
        self.handle.request();
        self.join()
    }
}

/// What a finished run leaves behind.
pub struct Report<S> {
    /// Counters and latency of the whole run.
    pub stats: Stats,
    /// The sink, with whatever it kept or counted.
    pub sink: S,
    /// How long the server ran.
    pub elapsed: Duration,
    /// The rules engine, with its counts, if there was one.
    pub rules: Option<Engine>,
}

/// Reactor knobs that are not protocol settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most simultaneous connections; past it, new ones wait in the backlog.
    pub max_connections: usize,
    /// Connections one client address may hold (0: no limit).
    pub max_per_client: u32,
    /// On the first shutdown request, how long messages in progress may take.
    pub grace: Duration,
    /// Non-blocking polls after a busy turn before the loop sleeps.
    pub spin_polls: u32,
    /// Stop (gracefully) once this many messages got their final reply.
    pub exit_after_messages: Option<u64>,
    /// Accept this many connections, then stop listening and stop once
    /// they have all closed.
    pub exit_after_connections: Option<u64>,
    /// Other loops listen on the same addresses (`--threads`): bind with
    /// `SO_REUSEPORT`.
    pub reuse_port: bool,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Self {
            max_connections: c.max_connections as usize,
            max_per_client: c.max_connections_per_client,
            grace: c.grace(),
            spin_polls: c.spin_polls,
            exit_after_messages: c.exit_after_messages,
            exit_after_connections: c.exit_after_connections,
            reuse_port: c.threads > 1,
        }
    }
}

/// Called every `every` with the loop's statistics, its sink and the time
/// since start (interval lines, a sink's own housekeeping, later metrics and
/// per-loop aggregation).
pub type TickHook<S> = Box<dyn FnMut(&Stats, &mut S, Duration) + Send>;

struct Tick<S> {
    every: Duration,
    next: Instant,
    hook: TickHook<S>,
}

/// Which deadline to arm after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    /// The connection's next deadline of any kind: its armed time was used
    /// up (a timer fired, a verdict ended a wait without one) or never set.
    Next,
    /// Only one that may be sooner than the armed time; the idle deadline
    /// only moves later, and the armed entry covers it.
    Sooner,
}

/// The loop's shared parts for a connection's event, borrowed field by field
/// (so a connection can be borrowed from the slab at the same time).
macro_rules! env {
    ($server:ident, $now:expr) => {
        Env {
            settings: &$server.settings,
            sink: &mut $server.sink,
            stats: &mut $server.stats,
            out: &mut $server.out,
            scratch: &mut $server.scratch,
            registry: $server.poll.registry(),
            policy: $server.rules.as_mut(),
            tally: &mut $server.tally,
            tls: $server.tls.as_ref(),
            clients: &mut $server.clients,
            now: $now,
        }
    };
}

/// What a connection needs from its loop while it is served.
struct Env<'a> {
    settings: &'a Settings,
    sink: &'a mut dyn Sink,
    stats: &'a mut Stats,
    /// The reply buffer all connections share; empty between events.
    out: &'a mut Vec<u8>,
    /// The read buffer all connections share.
    scratch: &'a mut [u8],
    registry: &'a Registry,
    /// The loop's rules, if any.
    policy: Option<&'a mut Engine>,
    /// Replies by id, counted by the sessions.
    tally: &'a mut Tally,
    /// The server's TLS configuration (STARTTLS), if any.
    tls: Option<&'a Arc<rustls::ServerConfig>>,
    /// Connections per client address (a proxied connection counts once
    /// its header named the client).
    clients: &'a mut Clients,
    now: Instant,
}

/// What a listener's connections speak besides SMTP.
#[derive(Debug, Clone, Copy)]
struct Role {
    tls: bool,
    lmtp: bool,
    proxied: bool,
}

impl Role {
    const TLS: Role = Role {
        tls: true,
        lmtp: false,
        proxied: false,
    };
    const LMTP: Role = Role {
        tls: false,
        lmtp: true,
        proxied: false,
    };
    const PROXIED: Role = Role {
        tls: false,
        lmtp: false,
        proxied: true,
    };
}

/// Connections must start with a PROXY header (`--proxy-protocol`).
struct ProxyWait {
    trusted: Vec<IpNet>,
    timeout: Duration,
}

/// One event loop with its listeners, connections and sink.
pub struct Server<S: Sink> {
    poll: Poll,
    /// TCP ones first, implicit-TLS ones next, UNIX-domain ones last (the
    /// first two line up with `local_addrs`).
    listeners: Vec<Listener>,
    local_addrs: Vec<SocketAddr>,
    conns: Slab<Conn>,
    settings: Settings,
    limits: Limits,
    sink: S,
    stats: Stats,
    scratch: Vec<u8>,
    out: Vec<u8>,
    still_ready: VecDeque<usize>,
    /// Connections not served while the sink was under pressure; they go
    /// back on `still_ready` once it is not.
    stalled: Vec<usize>,
    timers: Timers,
    fired: Vec<usize>,
    completions: Completions,
    clients: Clients,
    next_serial: u64,
    accept_paused: bool,
    accept_retry: Option<Instant>,
    requests: Arc<AtomicUsize>,
    waker: Arc<Waker>,
    /// Set once a graceful shutdown began: the moment the grace period ends.
    draining_until: Option<Instant>,
    tick: Option<Tick<S>>,
    /// Rules, delays, rate limits (`None`: sessions ask nothing).
    rules: Option<Engine>,
    /// The seed a rule set gets when it names none (for `PUT /rules`).
    seed: u64,
    control: Option<ControlPort>,
    /// How the sink reports itself to the control endpoint.
    report: Option<SinkReport<S>>,
    started: Instant,
    /// `exit_after_connections` reached: no longer accepting.
    accepted_all: bool,
    /// Replies by id; copied into `stats` before anyone reads it.
    tally: Tally,
    /// TLS for STARTTLS and the implicit-TLS listeners.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Per listener (as `listeners`): connections start with TLS.
    implicit_tls: Vec<bool>,
    /// Per listener (as `listeners`): connections speak LMTP (RFC 2033).
    lmtp: Vec<bool>,
    /// Per listener (as `listeners`): connections start with a PROXY
    /// header (`--proxy-protocol`: all; `--listen-proxy`: those).
    proxied: Vec<bool>,
    /// Clients whose XCLIENT and XFORWARD are obeyed (`--trusted`, where
    /// `--xclient` or `--xforward` is on).
    forwarders: Vec<IpNet>,
    /// Every connection starts with a PROXY header, from these sources.
    proxy: Option<ProxyWait>,
    /// Requests from the reporting side of a group of loops (`--threads`).
    asks: Completions<Ask<S>>,
}

/// Work another thread asks a loop to do between events, with the loop's
/// view (a snapshot of its figures, new rules, a reset): with several
/// loops, the one way figures and control actions cross between them.
pub type Ask<S> = Box<dyn FnOnce(&mut Controlled<'_, S>) + Send>;

/// A sink's parts of `/metrics` and `/stats`.
struct SinkReport<S> {
    metrics: fn(&S, &mut Exposition),
    json: fn(&S) -> Option<(&'static str, serde_json::Value)>,
}

/// The session id of connection `key`'s `serial`-th session (see [`SessionId`]).
fn session_id(key: usize, serial: u64) -> SessionId {
    (serial << 32) | (key as u64 & 0xffff_ffff)
}

fn slot_of(id: SessionId) -> usize {
    usize::try_from(id & 0xffff_ffff).unwrap_or(usize::MAX)
}

impl<S: Sink> Server<S> {
    /// Binds every listen address; `make_sink` gets the completer its
    /// worker threads use to deliver deferred verdicts. Nothing is accepted
    /// until [`Server::run`].
    pub fn bind_with(
        addrs: &[SocketAddr],
        backlog: i32,
        settings: Settings,
        limits: Limits,
        make_sink: impl FnOnce(Completer) -> S,
    ) -> Result<Self, ListenError> {
        let setup_err = |source: io::Error| {
            ListenError::tcp(
                addrs
                    .first()
                    .copied()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                source,
            )
        };
        let poll = Poll::new().map_err(setup_err)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(setup_err)?);
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let mut l = listener::bind(*addr, backlog, limits.reuse_port)?;
            poll.registry()
                .register(&mut l, Token(LISTENER_BASE - i), Interest::READABLE)
                .map_err(|source| ListenError::tcp(*addr, source))?;
            local_addrs.push(l.local_addr().unwrap_or(*addr));
            listeners.push(Listener::Tcp(l));
        }
        // Room for the longest partial line we keep, plus a read.
        let scratch_len = SCRATCH.max(2 * (settings.max_line + EXTENSION_ALLOWANCE));
        let completions = Completions::new(Arc::clone(&waker));
        let sink = make_sink(completions.completer());
        let asks = Completions::new(Arc::clone(&waker));
        Ok(Self {
            asks,
            poll,
            listeners,
            local_addrs,
            conns: Slab::new(),
            clients: Clients::new(limits.max_per_client),
            settings,
            limits,
            sink,
            stats: Stats::new(),
            scratch: vec![0; scratch_len],
            out: Vec::with_capacity(OUTPUT_HIGH_WATER + 4096),
            still_ready: VecDeque::new(),
            stalled: Vec::new(),
            timers: Timers::new(),
            fired: Vec::new(),
            completions,
            next_serial: 0,
            accept_paused: false,
            accept_retry: None,
            requests: Arc::new(AtomicUsize::new(0)),
            waker,
            draining_until: None,
            tick: None,
            rules: None,
            seed: 0,
            control: None,
            report: None,
            started: timer::now(),
            accepted_all: false,
            tally: [0; ReplyId::COUNT],
            tls: None,
            implicit_tls: vec![false; addrs.len()],
            lmtp: vec![false; addrs.len()],
            proxied: vec![false; addrs.len()],
            forwarders: Vec::new(),
            proxy: None,
        })
    }

    /// Offers TLS with `config`: STARTTLS (when the settings advertise it)
    /// and, on `implicit` addresses, TLS from the first byte (RFC 8314).
    /// Returns the implicit addresses as bound.
    pub fn serve_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        implicit: &[SocketAddr],
        backlog: i32,
    ) -> Result<Vec<SocketAddr>, ListenError> {
        let bound = implicit
            .iter()
            .map(|addr| self.add_listener(*addr, backlog, Role::TLS))
            .collect::<Result<_, _>>()?;
        self.tls = Some(config);
        Ok(bound)
    }

    /// Also listens on the UNIX-domain sockets at `paths` (plain SMTP,
    /// STARTTLS allowed), with `mode` if given; after every TCP listener.
    pub fn serve_unix(
        &mut self,
        paths: &[PathBuf],
        backlog: i32,
        mode: Option<u32>,
    ) -> Result<(), ListenError> {
        for path in paths {
            let mut l = Listener::Unix(listener::bind_unix(path, backlog, mode)?);
            let i = self.listeners.len();
            self.poll
                .registry()
                .register(&mut l, Token(LISTENER_BASE - i), Interest::READABLE)
                .map_err(|source| ListenError {
                    addr: crate::config::ListenOn::Unix(path.clone()),
                    source,
                })?;
            self.listeners.push(l);
            self.implicit_tls.push(false);
            self.lmtp.push(false);
            self.proxied.push(false);
        }
        Ok(())
    }

    /// The UNIX-domain paths listened on.
    pub fn unix_paths(&self) -> Vec<&Path> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                Listener::Unix(u) => Some(u.path()),
                Listener::Tcp(_) => None,
            })
            .collect()
    }

    /// A sender of [`Ask`]s to this loop, usable from any thread.
    pub fn asker(&self) -> Completer<Ask<S>> {
        self.asks.completer()
    }

    /// Also listens on `addrs` for LMTP (RFC 2033); returns them as bound.
    pub fn serve_lmtp(
        &mut self,
        addrs: &[SocketAddr],
        backlog: i32,
    ) -> Result<Vec<SocketAddr>, ListenError> {
        addrs
            .iter()
            .map(|addr| self.add_listener(*addr, backlog, Role::LMTP))
            .collect()
    }

    /// Every listener bound so far speaks LMTP (`--lmtp`).
    pub fn speak_lmtp(&mut self) {
        self.lmtp.iter_mut().for_each(|l| *l = true);
    }

    /// Obeys XCLIENT and XFORWARD (where the settings offer them) from
    /// clients in `nets`, and from every client of a UNIX listener (its
    /// file mode says who may connect; the peer has no address to check).
    pub fn trust(&mut self, nets: Vec<IpNet>) {
        self.forwarders = nets;
    }

    /// Binds one more listener and registers it; its address as bound.
    fn add_listener(
        &mut self,
        addr: SocketAddr,
        backlog: i32,
        role: Role,
    ) -> Result<SocketAddr, ListenError> {
        let mut l = listener::bind(addr, backlog, self.limits.reuse_port)?;
        let i = self.listeners.len();
        self.poll
            .registry()
            .register(&mut l, Token(LISTENER_BASE - i), Interest::READABLE)
            .map_err(|source| ListenError::tcp(addr, source))?;
        let local = l.local_addr().unwrap_or(addr);
        self.local_addrs.push(local);
        self.listeners.push(Listener::Tcp(l));
        self.implicit_tls.push(role.tls);
        self.lmtp.push(role.lmtp);
        self.proxied.push(role.proxied);
        Ok(local)
    }

    /// Runs `engine`'s rules; `seed` is what a set installed later by
    /// `PUT /rules` gets when it names none.
    pub fn set_rules(&mut self, engine: Option<Engine>, seed: u64) {
        self.rules = engine;
        self.seed = seed;
    }

    /// Serves the control endpoint on `addr`; returns the bound address.
    pub fn serve_control(&mut self, addr: SocketAddr) -> Result<SocketAddr, ListenError>
    where
        S: Summary,
    {
        let port = ControlPort::bind(addr, self.poll.registry())?;
        let bound = port.addr();
        self.control = Some(port);
        self.report = Some(SinkReport {
            metrics: <S as Summary>::metrics,
            json: <S as Summary>::json,
        });
        Ok(bound)
    }

    /// Binds with a sink that needs no completer.
    pub fn bind(
        addrs: &[SocketAddr],
        backlog: i32,
        settings: Settings,
        limits: Limits,
        sink: S,
    ) -> Result<Self, ListenError> {
        Self::bind_with(addrs, backlog, settings, limits, |_| sink)
    }

    /// Binds as the configuration says: its settings (with the users of
    /// `--auth-users`), its TLS (STARTTLS and `--listen-tls`). Errors are
    /// one line for a person.
    pub fn from_config(config: &Config, sink: S) -> Result<Self, String> {
        Self::from_config_with(config, |_| sink)
    }

    /// Binds as the configuration says; `make_sink` gets the completer.
    pub fn from_config_with(
        config: &Config,
        make_sink: impl FnOnce(Completer) -> S,
    ) -> Result<Self, String> {
        let mut settings = config.settings();
        if let (Some(users), Some(auth)) = (config.users()?, settings.security.auth.as_mut()) {
            auth.users = Arc::new(users);
        }
        let tls = config.tls()?;
        let mut server = Self::bind_with(
            &config.tcp_listen(),
            config.backlog,
            settings,
            Limits::from(config),
            make_sink,
        )
        .map_err(|e| e.to_string())?;
        if let Some(tls) = tls {
            server
                .serve_tls(tls, &config.listen_tls, config.backlog)
                .map_err(|e| e.to_string())?;
        }
        server
            .serve_lmtp(&config.listen_lmtp, config.backlog)
            .map_err(|e| e.to_string())?;
        server
            .serve_proxied(
                &config.listen_proxy,
                config.backlog,
                config.trusted.clone(),
                config.proxy_timeout,
            )
            .map_err(|e| e.to_string())?;
        // UNIX listeners last: `local_addrs` lists the TCP ones, in order.
        server
            .serve_unix(&config.unix_listen(), config.backlog, config.unix_mode)
            .map_err(|e| e.to_string())?;
        if config.lmtp {
            server.speak_lmtp();
        }
        if config.proxy_protocol {
            server.expect_proxy(config.trusted.clone(), config.proxy_timeout);
        }
        if config.xclient || config.xforward {
            server.trust(config.trusted.clone());
        }
        Ok(server)
    }

    /// Every connection (on every listener bound so far) must start with a
    /// PROXY protocol header, within `timeout`, from an address in
    /// `trusted`; others are closed unanswered.
    pub fn expect_proxy(&mut self, trusted: Vec<IpNet>, timeout: Duration) {
        self.proxy = Some(ProxyWait { trusted, timeout });
        self.proxied.iter_mut().for_each(|p| *p = true);
    }

    /// Also listens on `addrs` for connections that start with a PROXY
    /// header, as [`Server::expect_proxy`] says for those listeners only
    /// (`--listen-proxy`); returns them as bound.
    pub fn serve_proxied(
        &mut self,
        addrs: &[SocketAddr],
        backlog: i32,
        trusted: Vec<IpNet>,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, ListenError> {
        if addrs.is_empty() {
            return Ok(Vec::new());
        }
        self.proxy = Some(ProxyWait { trusted, timeout });
        addrs
            .iter()
            .map(|addr| self.add_listener(*addr, backlog, Role::PROXIED))
            .collect()
    }

    /// The bound addresses of the `--listen-proxy` listeners (with
    /// `--proxy-protocol` every listener expects the header).
    pub fn proxied_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_where(&self.proxied)
    }

    /// Calls `hook` every `every` from the loop's thread.
    pub fn on_tick(&mut self, every: Duration, hook: TickHook<S>) {
        self.tick = Some(Tick {
            every,
            next: timer::now() + every,
            hook,
        });
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

    /// The bound implicit-TLS addresses (a subset of `local_addrs`).
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_where(&self.implicit_tls)
    }

    /// The bound addresses of the `--listen-lmtp` listeners (a subset of
    /// `local_addrs`; with `--lmtp` every listener speaks LMTP).
    pub fn lmtp_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_where(&self.lmtp)
    }

    /// The bound TCP addresses of the listeners whose flag in `flags` (one
    /// per listener, as `listeners`; UNIX ones come last) is set.
    fn addrs_where(&self, flags: &[bool]) -> Vec<SocketAddr> {
        self.local_addrs
            .iter()
            .zip(flags)
            .filter(|(_, &on)| on)
            .map(|(a, _)| *a)
            .collect()
    }

    /// The bound addresses (with the real port when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// A handle that stops this server from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            waker: Arc::clone(&self.waker),
            requests: Arc::clone(&self.requests),
        }
    }

    /// Runs until shut down; returns the statistics and the sink.
    pub fn run(mut self) -> io::Result<Report<S>> {
        let started = timer::now();
        self.started = started;
        let mut events = Events::with_capacity(1024);
        let mut spins_left = 0u32;
        loop {
            if !events.is_empty() {
                spins_left = self.limits.spin_polls;
            }
            let timeout = self.sleep_time(&mut spins_left);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let now = timer::now();
            for ev in &events {
                self.file_event(ev.token(), ev.is_read_closed() || ev.is_error(), now);
            }
            self.resume_stalled();
            self.serve_still_ready(now);
            self.fire_completions(now);
            self.answer_asks(now);
            self.fire_timers(now);
            self.fire_tick(now, started);
            if let Some(c) = self.control.as_mut() {
                c.expire(now, self.poll.registry());
            }
            if self.shutdown_step(now) {
                break;
            }
        }
        if let Some(c) = self.control.as_mut() {
            c.close_all(self.poll.registry());
        }
        self.stats.replies_by_id = self.tally;
        Ok(Report {
            stats: self.stats,
            sink: self.sink,
            elapsed: timer::now().saturating_duration_since(started),
            rules: self.rules,
        })
    }

    /// How long the loop may sleep: not at all while connections are still
    /// ready or spinning; else until the next deadline of any kind.
    fn sleep_time(&self, spins_left: &mut u32) -> Option<Duration> {
        if !self.still_ready.is_empty() || *spins_left > 0 {
            // Busy-poll briefly after work (--spin-polls): on loopback the
            // next request often comes within microseconds, and a sleeping
            // receiver makes the sender's write pay for its wake-up.
            *spins_left = spins_left.saturating_sub(1);
            return Some(Duration::ZERO);
        }
        let next = [
            self.timers.next(),
            self.tick.as_ref().map(|t| t.next),
            self.accept_retry,
            self.draining_until,
            self.control.as_ref().and_then(ControlPort::deadline),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(timer::now()))
    }

    fn file_event(&mut self, token: Token, hup: bool, now: Instant) {
        match token {
            WAKER => {}
            Token(t) if t > LISTENER_BASE - self.listeners.len() && t <= LISTENER_BASE => {
                self.accept(LISTENER_BASE - t, now);
            }
            // Mail connections first: the common case pays one comparison.
            Token(key) if key < control::LISTENER.0 && self.sink.pressure() => {
                self.stalled.push(key);
            }
            Token(key) if key < control::LISTENER.0 => {
                self.with_conn(key, now, Arm::Sooner, |c, env| {
                    c.serve(Token(key), hup, env)
                });
            }
            t if ControlPort::owns(t) => self.control_event(t, now),
            Token(_) => {}
        }
    }

    /// The sink can take input again: serve what was left waiting (edge-
    /// triggered readiness is not reported twice, so they must be queued).
    fn resume_stalled(&mut self) {
        if !self.stalled.is_empty() && !self.sink.pressure() {
            self.still_ready.extend(self.stalled.drain(..));
        }
    }

    /// Connections left with input after their budget, or resumed, in order.
    fn serve_still_ready(&mut self, now: Instant) {
        for _ in 0..self.still_ready.len() {
            if let Some(key) = self.still_ready.pop_front() {
                if self.sink.pressure() {
                    self.stalled.push(key);
                    continue;
                }
                self.with_conn(key, now, Arm::Sooner, |c, env| {
                    c.serve(Token(key), true, env)
                });
            }
        }
    }

    fn fire_completions(&mut self, now: Instant) {
        if !self.completions.pending() {
            return;
        }
        let done: Vec<_> = self.completions.take().collect();
        for (id, verdict) in done {
            let key = slot_of(id);
            if self.conns.get(key).is_some_and(|c| c.session().id() == id) {
                self.with_conn(key, now, Arm::Next, |c, env| {
                    c.complete(Token(key), verdict, env)
                });
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expired(now, &mut fired);
        for &key in &fired {
            self.with_conn(key, now, Arm::Next, |c, env| {
                c.disarmed();
                c.on_timer(Token(key), env)
            });
        }
        if self.accept_retry.is_some_and(|t| now >= t) {
            self.accept_retry = None;
            self.resume_accepting(now);
        }
        fired.clear();
        self.fired = fired;
    }

    fn fire_tick(&mut self, now: Instant, started: Instant) {
        if let Some(t) = self.tick.as_mut() {
            if now >= t.next {
                self.stats.replies_by_id = self.tally;
                (t.hook)(&self.stats, &mut self.sink, now - started);
                t.next = now + t.every;
            }
        }
    }

    /// Runs `f` on connection `key` with the loop's shared parts, then does
    /// what it says: queues it again or removes it, and arms its deadline as
    /// `arm` says.
    fn with_conn(
        &mut self,
        key: usize,
        now: Instant,
        arm: Arm,
        f: impl FnOnce(&mut Conn, &mut Env<'_>) -> Next,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut env = env!(self, now);
        let next = f(conn, &mut env);
        if next == Next::Remove {
            return self.remove(key, now);
        }
        let at = match arm {
            Arm::Next => conn.deadline(&env),
            Arm::Sooner => conn.short_deadline(&env),
        };
        if let Some(at) = at.filter(|&at| conn.needs_arming(at)) {
            self.timers.arm(key, at);
        }
        if next == Next::Again {
            self.still_ready.push_back(key);
        }
    }

    fn accept(&mut self, index: usize, now: Instant) {
        loop {
            if self.accepted_all {
                return;
            }
            if self
                .limits
                .exit_after_connections
                .is_some_and(|n| self.stats.counters.connections >= n)
            {
                // --exit-after-connections: the rest are not ours to serve.
                self.accepted_all = true;
                for mut l in self.listeners.drain(..) {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                return;
            }
            if self.conns.len() >= self.limits.max_connections {
                // The rest wait in the kernel's backlog until one closes.
                self.accept_paused = true;
                return;
            }
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            // Who may connect to a UNIX socket its file mode decides.
            let local = matches!(listener, Listener::Unix(_));
            let (sock, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(_) => {
                    // EMFILE, ENFILE, ENOBUFS: try again a little later.
                    self.accept_paused = true;
                    self.accept_retry = Some(now + ACCEPT_RETRY);
                    return;
                }
            };
            let proxied = self.proxied.get(index).copied().unwrap_or(false);
            if let Some(p) = self.proxy.as_ref().filter(|_| proxied) {
                if !p.trusted.iter().any(|net| net.contains(&peer.ip())) {
                    // Not a proxy of ours: closed unanswered.
                    self.stats.counters.proxy_refused += 1;
                    continue;
                }
            }
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            self.next_serial += 1;
            let mut session = Session::new(session_id(key, self.next_serial), peer, now);
            let implicit = self.implicit_tls.get(index).copied().unwrap_or(false);
            if self.lmtp.get(index).copied().unwrap_or(false) {
                session.speak_lmtp();
            }
            let forwarding = !self.forwarders.is_empty();
            if forwarding && (local || self.forwarders.iter().any(|n| n.contains(&peer.ip()))) {
                session.trust();
            }
            if let Some(p) = self.proxy.as_ref().filter(|_| proxied) {
                // The header first, in plaintext whatever the listener.
                let until = now + p.timeout;
                let mut conn = Conn::new(Transport::plain(sock), session);
                if conn.register(self.poll.registry(), Token(key)).is_err() {
                    continue;
                }
                entry.insert(conn);
                self.stats.counters.connections += 1;
                self.stats.counters.connections_open += 1;
                self.with_conn(key, now, Arm::Next, |c, env| {
                    c.await_proxy(Token(key), until, implicit, env)
                });
                continue;
            }
            let mut conn = match (&self.tls, implicit, sock) {
                (Some(config), true, Stream::Tcp(sock)) => {
                    let Ok(tls) =
                        rustls::server::UnbufferedServerConnection::new(Arc::clone(config))
                    else {
                        continue;
                    };
                    Conn::new_tls(Transport::tls_server(sock, tls), session, now)
                }
                (_, _, sock) => Conn::new(Transport::plain(sock), session),
            };
            if conn.register(self.poll.registry(), Token(key)).is_err() {
                continue;
            }
            entry.insert(conn);
            self.stats.counters.connections += 1;
            self.stats.counters.connections_open += 1;
            let admitted = self.clients.arrive(peer.ip());
            self.with_conn(key, now, Arm::Next, |c, env| {
                c.start(Token(key), admitted, env)
            });
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

    fn remove(&mut self, key: usize, now: Instant) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let mut env = env!(self, now);
        conn.finish(&mut env);
        if let Some(ip) = conn.counted() {
            self.clients.leave(ip);
        }
        self.timers.disarm(key);
        self.stats.counters.connections_open -= 1;
        if self.accept_paused && self.accept_retry.is_none() {
            self.resume_accepting(now);
        }
    }

    /// Acts on shutdown requests; true when the loop must end.
    fn shutdown_step(&mut self, now: Instant) -> bool {
        if self.accepted_all && self.conns.is_empty() {
            return true;
        }
        let c = &self.stats.counters;
        if self
            .limits
            .exit_after_messages
            .is_some_and(|n| c.messages + c.messages_rejected + c.messages_dropped >= n)
            && self.requests.load(Ordering::SeqCst) == 0
        {
            // --exit-after-messages: a graceful stop, as on SIGTERM.
            self.requests.fetch_add(1, Ordering::SeqCst);
        }
        match self.requests.load(Ordering::SeqCst) {
            1 if self.draining_until.is_none() => self.begin_drain(now),
            0 | 1 => {}
            _ => {
                self.close_all(now);
                return true;
            }
        }
        match self.draining_until {
            Some(_) if self.conns.is_empty() => true,
            Some(until) if now >= until => {
                self.close_all(now);
                true
            }
            _ => false,
        }
    }

    /// First shutdown request: stop accepting; 421 to every session not in
    /// the middle of a message; the others finish within the grace period.
    fn begin_drain(&mut self, now: Instant) {
        self.draining_until = Some(now + self.limits.grace);
        self.accept_retry = None;
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.with_conn(key, now, Arm::Next, |c, env| c.shutdown(Token(key), env));
        }
    }

    fn close_all(&mut self, now: Instant) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            // No lingering when stopping for good.
            self.with_conn(key, now, Arm::Next, |c, env| {
                c.abort(ReplyId::Shutdown, env);
                Next::Remove
            });
        }
    }
}

/// The control endpoint's view of a loop (and an [`Ask`]'s).
pub struct Controlled<'a, S> {
    tally: &'a mut Tally,
    stats: &'a mut Stats,
    rules: &'a mut Option<Engine>,
    settings: &'a Settings,
    sink: &'a S,
    report: Option<&'a SinkReport<S>>,
    seed: u64,
    uptime: Duration,
}

/// Builds a loop's [`Controlled`] view, field by field (so the control
/// port can be borrowed beside it).
macro_rules! controlled {
    ($server:ident, $now:expr) => {{
        $server.stats.replies_by_id = $server.tally;
        Controlled {
            tally: &mut $server.tally,
            stats: &mut $server.stats,
            rules: &mut $server.rules,
            settings: &$server.settings,
            sink: &$server.sink,
            report: $server.report.as_ref(),
            seed: $server.seed,
            uptime: $now.saturating_duration_since($server.started),
        }
    }};
}

impl<'a, S> Controlled<'a, S> {
    /// The view of figures merged from several loops: `POST /reset` and
    /// `PUT /rules` on it change nothing there (the caller sends those to
    /// every loop instead).
    pub fn merged(
        tally: &'a mut Tally,
        stats: &'a mut Stats,
        rules: &'a mut Option<Engine>,
        settings: &'a Settings,
        sink: &'a S,
        uptime: Duration,
    ) -> Self
    where
        S: Summary,
    {
        Self {
            tally,
            stats,
            rules,
            settings,
            sink,
            report: Some(&SinkReport {
                metrics: <S as Summary>::metrics,
                json: <S as Summary>::json,
            }),
            seed: 0,
            uptime,
        }
    }

    /// The loop's statistics (replies by id included).
    pub fn statistics(&self) -> &Stats {
        self.stats
    }

    /// The loop's sink.
    pub fn sink(&self) -> &S {
        self.sink
    }

    /// The loop's rules engine, if any.
    pub fn rules(&self) -> Option<&Engine> {
        self.rules.as_ref()
    }

    /// How long the loop has run.
    pub fn uptime(&self) -> Duration {
        self.uptime
    }
}

impl<S> crate::control::Target for Controlled<'_, S> {
    fn metrics(&mut self) -> String {
        let mut x = Exposition::new();
        crate::metrics::server(&mut x, self.stats, self.rules.as_ref(), self.uptime);
        if let Some(r) = self.report {
            (r.metrics)(self.sink, &mut x);
        }
        x.finish()
    }

    fn stats(&mut self) -> serde_json::Value {
        let mut j = self.stats.json(self.uptime);
        let codes: serde_json::Map<String, serde_json::Value> = self
            .stats
            .replies_by_code()
            .into_iter()
            .map(|(c, n)| (c.to_string(), n.into()))
            .collect();
        j["counters"]["replies_by_code"] = codes.into();
        j["counters"]["connections_open"] = self.stats.counters.connections_open.into();
        if let Some(e) = self.rules.as_ref() {
            j["rules"] = e.json();
        }
        if let Some((key, v)) = self.report.and_then(|r| (r.json)(self.sink)) {
            j[key] = v;
        }
        j
    }

    fn put_rules(&mut self, text: &str) -> Result<String, String> {
        let set = spec::parse_file(text).map_err(|e| format!("rules not changed: {e}"))?;
        let what = format!(
            "{} rule(s), rate limits {}, magic addresses {}",
            set.rules.len(),
            if set.limits.is_empty() { "none" } else { "set" },
            if set.magic { "on" } else { "off" }
        );
        if let Some(e) = self.rules.as_mut() {
            e.install(set)
                .map_err(|e| format!("rules not changed: {e}"))?;
        } else {
            {
                let engine = Engine::new(set, self.seed, &self.settings.hostname)
                    .map_err(|e| format!("rules not changed: {e}"))?;
                *self.rules = Some(engine);
            }
        }
        let seed = self.rules.as_ref().map_or(self.seed, Engine::seed);
        Ok(format!("rules replaced: {what}, seed {seed}"))
    }

    fn reset(&mut self) {
        *self.tally = [0; ReplyId::COUNT];
        self.stats.reset();
        if let Some(e) = self.rules.as_mut() {
            e.reset_counts();
        }
    }
}

impl<S: Sink> Server<S> {
    fn control_event(&mut self, token: Token, now: Instant) {
        let Some(port) = self.control.as_mut() else {
            return;
        };
        let mut target = controlled!(self, now);
        port.event(token, self.poll.registry(), now, &mut target);
    }

    /// Runs what other threads asked of this loop.
    fn answer_asks(&mut self, now: Instant) {
        if !self.asks.pending() {
            return;
        }
        let asks: Vec<Ask<S>> = self.asks.take().collect();
        for ask in asks {
            ask(&mut controlled!(self, now));
        }
    }

    /// The control endpoint's address, if it serves one.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().map(ControlPort::addr)
    }
}
