//! Command-line configuration (clap) and its validation. No globals: `main`
//! builds one [`Config`] and hands the parts to the reactor and the protocol.

use crate::net::tls::{self, Identity};
use crate::proto::server::auth::Users;
use crate::proto::server::{AuthOffer, Security, Settings, Timeouts};
use crate::rules::spec::{self, Short};
use crate::rules::{Engine, RuleSet};
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `--help`'s examples: one per MTA behaviour the rules test.
const EXAMPLES: &str = "\
Examples (what each tests in an MTA under test):
  retry queue, back-off       smtpsink --reply 'rcpt:451 4.3.0 Try later:0.3' --seed 1
  per-recipient failures      smtpsink --magic-addresses   (to: reject550@x, tempfail451@x, ok@x)
  lost connection, duplicates smtpsink --close end:0.1 --verify
  connection caching          smtpsink --max-messages-per-connection 5
  timeouts                    smtpsink --delay 'end:400s'    (or --delay connect:70s)
  rate limits, concurrency    smtpsink --rate-limit client-conn=2/s --rate-limit msg=100/s
  slow receiver               smtpsink --throttle 20000 --delay 'rcpt:lognormal 50ms 1'
  greylisting                 smtpsink --greylist 60s
  live metrics and rules      smtpsink --control 127.0.0.1:9025   (GET /metrics, PUT /rules)
  bounded CI run              smtpsink --exit-after-messages 1000 --json out.json
  TLS and AUTH                smtpsink --listen-tls 127.0.0.1:4650 --auth-users users.txt
                              (STARTTLS is on by default with a self-signed certificate)";

/// What to do with a bare LF inside DATA (RFC 5321 2.3.8, 4.1.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BareLf {
    /// Keep it as an ordinary body byte (it never ends a line or the data).
    Accept,
    /// Refuse the message with 550 5.5.2 once it has been read.
    Reject,
}

/// smtpsink: an SMTP sink that accepts mail as fast as the machine allows,
/// discards it, and reports exactly what happened.
///
/// Example: `smtpsink --listen 127.0.0.1:2525 --listen [::1]:2525 --stats-interval 1`
// Each bool is one independent command-line switch.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Parser)]
#[command(name = "smtpsink", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Config {
    /// Address to listen on, IP:PORT or unix:PATH (repeat for several; IPv6
    /// as `[::1]:2525`). Never resolved through DNS.
    #[arg(
        long = "listen",
        short = 'l',
        value_name = "IP:PORT|unix:PATH",
        default_value = "127.0.0.1:2525"
    )]
    pub listen: Vec<ListenOn>,

    /// Permissions of `--listen unix:` sockets, octal (e.g. 0660); without
    /// it the umask decides.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,

    /// Event loops: N independent single-threaded loops, each with its own
    /// listening sockets on the same addresses (`SO_REUSEPORT`); loop 0 also
    /// owns the UNIX listeners.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,

    /// Host name used in the greeting, HELO/EHLO and 421 replies.
    #[arg(long, default_value = "localhost")]
    pub hostname: String,

    /// Most simultaneous connections; past it, new ones wait in the backlog.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Listen backlog (the kernel may cap it at net.core.somaxconn).
    #[arg(long, default_value_t = 1024)]
    pub backlog: i32,

    /// Largest message body accepted, in octets; advertised by SIZE, larger ones get 552 5.3.4.
    /// At least 1: `SIZE 0` would mean "no limit" (RFC 1870).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 64 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_message_size: u64,

    /// Recipients per transaction; the next one gets 452 4.5.3 (RFC 5321 asks for at least 100).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(100..))]
    pub max_recipients: u32,

    /// Longest command line in octets, CRLF included (RFC 5321: 512; MAIL/RCPT get 512 more
    /// for their extension parameters). Longer lines get 500 5.5.2.
    #[arg(long, value_name = "BYTES", default_value_t = 512, value_parser = clap::value_parser!(u32).range(512..=65536))]
    pub max_line_length: u32,

    /// What to do with a bare LF inside message data.
    #[arg(long, value_enum, default_value_t = BareLf::Accept)]
    pub bare_lf: BareLf,

    /// Idle timeout in seconds: nothing received and no reply taken for this
    /// long, then 421 4.4.2 and close (RFC 5321 4.5.3.2 suggests 300).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    /// A command line must be complete this many seconds after its first
    /// byte, however steadily it trickles in; then 421 4.4.2 and close.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub command_timeout: Duration,

    /// Message content (DATA, BDAT chunks) must arrive at least this fast,
    /// in octets per second over each --data-window; slower: 421 4.4.2 and
    /// close. 0 turns the check off.
    #[arg(long, value_name = "BYTES", default_value_t = 500)]
    pub data_min_rate: u64,

    /// The window, in seconds, over which --data-min-rate is measured.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub data_window: Duration,

    /// Most simultaneous connections from one client address; past it a new
    /// one gets 421 4.7.0 and is closed. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections_per_client: u32,

    /// On SIGINT/SIGTERM, seconds a message in progress may take to finish before 421.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub grace: u64,

    /// Check smtpload's integrity headers (sequence number, body CRC) in every
    /// message and count intact, corrupted, duplicated and lost messages.
    #[arg(long)]
    pub verify: bool,

    /// Keep every accepted message as a file in this Maildir (tmp/, new/,
    /// cur/ are created); the 250 is sent once the file is in new/.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["verify", "run_summary", "transit_log"])]
    pub maildir: Option<std::path::PathBuf>,

    /// With --maildir: send the 250 only once the message and its directory
    /// entry are durable; messages that finish together share one sync.
    #[arg(long, requires = "maildir")]
    pub fsync: bool,

    /// With --maildir: keep at most N messages in new/; each message stored
    /// past it deletes the oldest one there (for long soak runs).
    #[arg(long, value_name = "N", requires = "maildir", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stored: Option<u64>,

    /// smtpload's run summary (its `--summary FILE`); implies --verify. The
    /// sink reads it once it appears, counts every message the run
    /// acknowledged that never arrived, and stops by itself when all have
    /// arrived or none came for --linger seconds (the missing ones are then
    /// lost; stopped earlier by a signal, they count as in flight).
    #[arg(long, value_name = "FILE")]
    pub run_summary: Option<std::path::PathBuf>,

    /// With --run-summary: how long to wait, after the summary appeared and
    /// after the last message of the run arrived, before the missing ones
    /// count as lost.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub linger: Duration,

    /// Write the final statistics (and the verify figures) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,

    /// Write the transit latency of verified messages (smtpload's send stamp
    /// to end of data here) every second to FILE, an `HdrHistogram`
    /// interval log; implies --verify.
    #[arg(long, value_name = "FILE")]
    pub transit_log: Option<std::path::PathBuf>,

    /// After a turn with work, poll this many times without sleeping before
    /// the loop sleeps: a few microseconds of CPU per turn that spare clients
    /// the cost of waking the server for their next request. Raises msgs/s
    /// with lock-step clients on loopback, at some CPU per message.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub spin_polls: u32,

    /// Print one statistics line to stderr every SECS seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,

    /// Rules file (TOML): replies, delays, closes, throttles, drops and
    /// greylisting by stage, address, client and count, plus rate limits.
    /// See README "Misbehaving on purpose". Its rules come before the
    /// short forms below.
    #[arg(long, value_name = "FILE", help_heading = "Misbehaving on purpose")]
    pub rules: Option<std::path::PathBuf>,

    /// Answer STAGE with REPLY (a code, or a whole reply), with probability
    /// P (default: always). `--reply rcpt:550:0.1`: 10% of RCPTs get 550;
    /// `--reply 'mail:451 4.7.1 Try later'`. STAGE: connect, helo, mail,
    /// rcpt, data, end, bdat, rset, quit, other, any. A 421 also closes.
    #[arg(
        long = "reply",
        value_name = "STAGE:REPLY[:P]",
        help_heading = "Misbehaving on purpose"
    )]
    pub reply: Vec<String>,

    /// Hold the reply to STAGE: `data:2s`, `rcpt:100ms..1s` (uniform),
    /// `end:lognormal 200ms 0.5`, with probability P.
    #[arg(
        long = "delay",
        value_name = "STAGE:DELAY[:P]",
        help_heading = "Misbehaving on purpose"
    )]
    pub delay: Vec<String>,

    /// Close the connection without a reply at STAGE, with probability P
    /// (`--close end:0.01`: 1% of messages are lost after their data).
    #[arg(
        long = "close",
        value_name = "STAGE[:P]",
        help_heading = "Misbehaving on purpose"
    )]
    pub close: Vec<String>,

    /// Close without a reply once BYTES of a message's content arrived.
    #[arg(long, value_name = "BYTES", help_heading = "Misbehaving on purpose")]
    pub close_after: Option<u64>,

    /// Read every connection at no more than this many octets per second.
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Misbehaving on purpose")]
    pub throttle: Option<u64>,

    /// Accept-but-drop: answer 250 to this fraction of messages (0 to 1)
    /// but keep and count none of them as stored.
    #[arg(long, value_name = "P", help_heading = "Misbehaving on purpose")]
    pub drop: Option<f64>,

    /// Greylist: the first RCPT of each client/sender/recipient triple gets
    /// 451 4.7.1; a retry at least this long after passes (`60s`, `5m`).
    #[arg(long, value_name = "DURATION", help_heading = "Misbehaving on purpose")]
    pub greylist: Option<String>,

    /// A token-bucket rate limit, KIND=N/s (or /m, /h); KIND is
    /// connections, messages or recipients (conn, msg, rcpt), `client-`
    /// in front for each client address. Past it: 421 4.7.0 (connections),
    /// 451 4.7.1 (MAIL, RCPT). `--rate-limit client-conn=5/s`.
    #[arg(
        long = "rate-limit",
        value_name = "KIND=RATE",
        help_heading = "Misbehaving on purpose"
    )]
    pub rate_limit: Vec<String>,

    /// Recipient local parts like reject550, tempfail451, delay2s,
    /// disconnect, datareject554, drop do what they say (README table).
    #[arg(long, help_heading = "Misbehaving on purpose")]
    pub magic_addresses: bool,

    /// Seed of the random decisions (probabilities, random delays): the
    /// same seed and the same traffic give the same decisions. Default: a
    /// new seed each start, printed.
    #[arg(long, value_name = "N", help_heading = "Misbehaving on purpose")]
    pub seed: Option<u64>,

    /// After N 4xx/5xx replies in one session: 421 4.7.0 and close. 0: never.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Misbehaving on purpose"
    )]
    pub max_errors: u32,

    /// Transactions per connection; the next MAIL gets 421 4.7.0 and the
    /// connection closes. 0: no limit.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Misbehaving on purpose"
    )]
    pub max_messages_per_connection: u32,

    /// Stop once N messages got their final reply (accepted, refused or
    /// dropped): print the final statistics and exit 0 (for CI).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Misbehaving on purpose")]
    pub exit_after_messages: Option<u64>,

    /// Serve N connections, then stop listening, and exit 0 once they closed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Misbehaving on purpose")]
    pub exit_after_connections: Option<u64>,

    /// Serve the control and metrics endpoint (HTTP/1.1) on IP:PORT:
    /// GET /metrics (Prometheus), GET /stats (JSON), PUT /rules, POST
    /// /reset, GET /health. Loopback only unless --control-allow-remote.
    #[arg(long, value_name = "IP:PORT", help_heading = "Control and metrics")]
    pub control: Option<SocketAddr>,

    /// Let --control listen on an address other than loopback (anyone who
    /// reaches it can change the rules).
    #[arg(long, requires = "control", help_heading = "Control and metrics")]
    pub control_allow_remote: bool,

    /// Every listener (implicit TLS ones too) expects a PROXY protocol
    /// header, version 1 or 2 (`HAProxy`'s), before the greeting, from a
    /// --trusted address; the client it names is the session's client
    /// (trace headers, statistics, per-client limits). A connection from
    /// elsewhere, or without a valid header in time, is closed unanswered.
    #[arg(long, help_heading = "Proxies")]
    pub proxy_protocol: bool,

    /// Also listen on IP:PORT for connections that start with a PROXY
    /// header (as --proxy-protocol, for this listener only); repeat for
    /// several.
    #[arg(long, value_name = "IP:PORT", help_heading = "Proxies")]
    pub listen_proxy: Vec<SocketAddr>,

    /// Offer Postfix's XCLIENT to --trusted clients (a proxy or test
    /// harness naming the real client: ADDR, NAME, HELO, LOGIN...); the
    /// session then starts over as from that client. Others get 550 5.7.0.
    #[arg(long, help_heading = "Proxies")]
    pub xclient: bool,

    /// Offer Postfix's XFORWARD to --trusted clients (a content filter
    /// passing on the original client for the next message's trace header
    /// and per-client limits). Others get 550 5.7.0.
    #[arg(long, help_heading = "Proxies")]
    pub xforward: bool,

    /// Addresses that may speak as a proxy (CIDR, comma-separated): PROXY
    /// headers, XCLIENT, XFORWARD.
    #[arg(
        long,
        value_name = "CIDR,...",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1/128",
        help_heading = "Proxies"
    )]
    pub trusted: Vec<ipnet::IpNet>,

    /// Seconds a PROXY header may take to arrive (Postfix's
    /// `smtpd_upstream_proxy_timeout` is 5 s too).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs, help_heading = "Proxies")]
    pub proxy_timeout: Duration,

    /// Every --listen address speaks LMTP (RFC 2033) instead of SMTP: LHLO,
    /// and one reply per recipient after each message.
    #[arg(long, help_heading = "LMTP")]
    pub lmtp: bool,

    /// Also listen on IP:PORT for LMTP; repeat for several.
    #[arg(long, value_name = "IP:PORT", help_heading = "LMTP")]
    pub listen_lmtp: Vec<SocketAddr>,

    /// Also listen on IP:PORT with TLS from the first byte (implicit TLS,
    /// RFC 8314, as port 465); repeat for several.
    #[arg(
        long,
        value_name = "IP:PORT",
        conflicts_with = "no_tls",
        help_heading = "TLS and AUTH"
    )]
    pub listen_tls: Vec<SocketAddr>,

    /// The certificate chain (PEM, leaf first). Without --tls-cert/--tls-key
    /// a self-signed certificate for --hostname is made at start.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "no_tls",
        help_heading = "TLS and AUTH"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "TLS and AUTH"
    )]
    pub tls_key: Option<PathBuf>,

    /// Offer no TLS at all: STARTTLS is not advertised and answered 454.
    #[arg(long, help_heading = "TLS and AUTH")]
    pub no_tls: bool,

    /// Answer MAIL before STARTTLS with 530 5.7.0 (RFC 3207 4).
    #[arg(long, conflicts_with = "no_tls", help_heading = "TLS and AUTH")]
    pub require_tls: bool,

    /// Check AUTH credentials against FILE (`user:password` per line, `#`
    /// comments). Without it any credentials are accepted.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "no_auth",
        help_heading = "TLS and AUTH"
    )]
    pub auth_users: Option<PathBuf>,

    /// Offer AUTH before TLS too (by default only on a secured session,
    /// RFC 4954 14).
    #[arg(long, conflicts_with = "no_auth", help_heading = "TLS and AUTH")]
    pub auth_plaintext: bool,

    /// Offer no AUTH (502 to the command).
    #[arg(long, help_heading = "TLS and AUTH")]
    pub no_auth: bool,
}

impl Config {
    /// The protocol settings this configuration implies.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::new(
            &self.hostname,
            self.max_message_size,
            self.max_recipients,
            self.max_line_length as usize,
        );
        s.reject_bare_lf = self.bare_lf == BareLf::Reject;
        s.max_errors = self.max_errors;
        s.max_transactions = self.max_messages_per_connection;
        s.timeouts = Timeouts {
            idle: self.timeout(),
            command: self.command_timeout,
            data_min_rate: self.data_min_rate,
            data_window: self.data_window,
        };
        s.set_security(Security {
            starttls: !self.no_tls,
            require_tls: self.require_tls,
            auth: (!self.no_auth).then(|| AuthOffer {
                plaintext: self.auth_plaintext,
                users: Arc::new(Users::anyone()),
            }),
        });
        if self.xclient || self.xforward {
            s.set_forwarding(self.xclient, self.xforward);
        }
        s
    }

    /// The users of `--auth-users`, read now; `None` without it.
    pub fn users(&self) -> Result<Option<Users>, String> {
        let Some(path) = &self.auth_users else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read {}: {}",
                path.display(),
                crate::net::plain_error(&e)
            )
        })?;
        Users::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The TLS configuration (`None` with --no-tls): the certificate files,
    /// or a self-signed certificate for --hostname.
    pub fn tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        if self.no_tls {
            return Ok(None);
        }
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Identity::Files { cert, key },
            _ => Identity::SelfSigned(&self.hostname),
        };
        tls::server_config(&identity).map(Some)
    }

    /// The idle timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    /// How long messages in progress may take at shutdown.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace)
    }

    /// Whether the verify sink is wanted (asked for, or implied).
    pub fn verifying(&self) -> bool {
        self.verify || self.run_summary.is_some() || self.transit_log.is_some()
    }

    /// How often to print a statistics line, if at all.
    pub fn stats_interval(&self) -> Option<Duration> {
        (self.stats_interval > 0).then(|| Duration::from_secs(self.stats_interval))
    }

    /// The rule set the file and the short forms describe (file first);
    /// `None` when they describe nothing. Errors are one line for people.
    pub fn rule_set(&self) -> Result<Option<RuleSet>, String> {
        let mut set = match &self.rules {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                spec::parse_file(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => RuleSet::default(),
        };
        let mut specs = Vec::new();
        for (kind, list) in [
            (Short::Reply, &self.reply),
            (Short::Delay, &self.delay),
            (Short::Close, &self.close),
        ] {
            for s in list {
                specs.push(spec::parse_short(kind, s)?);
            }
        }
        if let Some(n) = self.close_after {
            specs.push(
                spec::simple("mail", None)
                    .close_after(n)
                    .named("close-after"),
            );
        }
        if let Some(n) = self.throttle {
            specs.push(spec::simple("connect", None).throttle(n).named("throttle"));
        }
        if let Some(p) = self.drop {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("--drop {p}: a fraction from 0 to 1"));
            }
            specs.push(spec::simple("end", Some(p)).drop_it().named("drop"));
        }
        if let Some(g) = &self.greylist {
            specs.push(spec::simple("rcpt", None).greylist(g).named("greylist"));
        }
        let base = set.rules.len();
        for (i, s) in specs.iter().enumerate() {
            // Two rules with one name: refused when the engine installs them.
            set.rules.push(s.build(base + i)?);
        }
        for r in &self.rate_limit {
            let (kind, per_client, rate) =
                spec::parse_rate_limit(r).map_err(|e| format!("--rate-limit {e}"))?;
            set.limits.set(kind, per_client, rate);
        }
        set.magic |= self.magic_addresses;
        if self.seed.is_some() {
            set.seed = self.seed;
        }
        Ok((!set.is_empty()).then_some(set))
    }

    /// The rules engine the configuration asks for (`None`: no rules, no
    /// limits, no magic); `seed` when neither --seed nor the file gives one.
    pub fn engine(&self, seed: u64) -> Result<Option<Engine>, String> {
        self.loop_engine(seed, 0)
    }

    /// Event loop `index`'s engine (`--threads`): whichever seed is used,
    /// given or drawn, moved on by `index`, so loops do not repeat each
    /// other's draws and the same seed still gives the same decisions.
    pub fn loop_engine(&self, seed: u64, index: u16) -> Result<Option<Engine>, String> {
        let by = u64::from(index);
        self.rule_set()?
            .map(|mut set| {
                set.seed = set.seed.map(|s| s.wrapping_add(by));
                Engine::new(set, seed.wrapping_add(by), &self.hostname)
            })
            .transpose()
    }

    /// The TCP addresses of `--listen`.
    pub fn tcp_listen(&self) -> Vec<SocketAddr> {
        self.listen
            .iter()
            .filter_map(|l| match l {
                ListenOn::Tcp(a) => Some(*a),
                ListenOn::Unix(_) => None,
            })
            .collect()
    }

    /// The UNIX-domain paths of `--listen`.
    pub fn unix_listen(&self) -> Vec<PathBuf> {
        self.listen
            .iter()
            .filter_map(|l| match l {
                ListenOn::Unix(p) => Some(p.clone()),
                ListenOn::Tcp(_) => None,
            })
            .collect()
    }

    /// Checks what clap cannot: --control on loopback unless allowed; what
    /// UNIX listeners and several loops cannot do (yet).
    pub fn check(&self) -> Result<(), String> {
        let unix = self.unix_listen();
        if let (Some(p), true) = (unix.first(), self.proxy_protocol) {
            return Err(format!(
                "--proxy-protocol with --listen unix:{}: a UNIX peer has no address --trusted could vouch for",
                p.display()
            ));
        }
        if self.threads > 1 {
            let no = |what: &str| {
                Err(format!(
                    "--threads {} with {what}: not supported; use one loop",
                    self.threads
                ))
            };
            if self.maildir.is_some() {
                return no("--maildir (one storage queue per loop would race on file names and --max-stored)");
            }
            if self.transit_log.is_some() {
                return no("--transit-log");
            }
            if self.exit_after_connections.is_some() {
                return no("--exit-after-connections");
            }
        }
        if let Some(a) = self.control {
            if !a.ip().is_loopback() && !self.control_allow_remote {
                return Err(format!(
                    "--control {a}: not a loopback address; anyone who reaches it can change the rules (add --control-allow-remote if that is meant)"
                ));
            }
        }
        Ok(())
    }

    /// The defaults, for tests and embedding.
    pub fn default_for(listen: SocketAddr) -> Self {
        let mut c = Self::parse_from(["smtpsink"]);
        c.listen = vec![ListenOn::Tcp(listen)];
        c
    }
}

/// Where to listen: `IP:PORT`, or `unix:PATH` for a UNIX-domain socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenOn {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A UNIX-domain stream socket at this path.
    Unix(PathBuf),
}

impl std::str::FromStr for ListenOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(ListenOn::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(ListenOn::Tcp)
            .map_err(|_| format!("{s:?}: expected IP:PORT (no host names) or unix:PATH"))
    }
}

impl std::fmt::Display for ListenOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenOn::Tcp(a) => write!(f, "{a}"),
            ListenOn::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// File permissions in octal (`0660`, `660`).
fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0660"))
}

/// Seconds, decimals allowed (`0.5`), more than zero.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v <= 1e9) {
        return Err(format!("{s} must be more than 0 and at most 1e9 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = Config::try_parse_from(["smtpsink"]).unwrap();
        assert_eq!(
            c.listen,
            vec![ListenOn::Tcp("127.0.0.1:2525".parse().unwrap())]
        );
        assert_eq!(c.settings().max_line, 512);
        assert!(Config::try_parse_from(["smtpsink", "--max-recipients", "99"]).is_err());
        assert!(Config::try_parse_from(["smtpsink", "--listen", "localhost:25"]).is_err());
        let c = Config::try_parse_from([
            "smtpsink",
            "-l",
            "[::1]:0",
            "-l",
            "127.0.0.1:0",
            "--bare-lf",
            "reject",
        ])
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert!(c.settings().reject_bare_lf);
        let c = Config::try_parse_from(["smtpsink", "-l", "unix:/tmp/s", "--unix-mode", "0660"])
            .unwrap();
        assert_eq!(c.unix_listen(), [PathBuf::from("/tmp/s")]);
        assert_eq!((c.tcp_listen().len(), c.unix_mode), (0, Some(0o660)));
        for bad in ["unix:", "localhost:25"] {
            assert!(
                Config::try_parse_from(["smtpsink", "-l", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Config::try_parse_from(["smtpsink", "--unix-mode", "0999"]).is_err());
        let c =
            Config::try_parse_from(["smtpsink", "--threads", "2", "--maildir", "/tmp/m"]).unwrap();
        assert!(c.check().unwrap_err().contains("--maildir"));
        // Loop i's rules draw from seed + i, given or not.
        let c = Config::try_parse_from(["smtpsink", "--magic-addresses"]).unwrap();
        let seed = |c: &Config, i| c.loop_engine(5, i).unwrap().unwrap().seed();
        assert_eq!((seed(&c, 0), seed(&c, 3)), (5, 8));
        let c = Config::try_parse_from(["smtpsink", "--magic-addresses", "--seed", "9"]).unwrap();
        assert_eq!((seed(&c, 0), seed(&c, 1)), (9, 10));
        let t = Config::try_parse_from(["smtpsink"])
            .unwrap()
            .settings()
            .timeouts;
        assert_eq!(t, Timeouts::default());
        let c = Config::try_parse_from([
            "smtpsink",
            "--command-timeout",
            "0.5",
            "--data-window",
            "2",
            "--data-min-rate",
            "0",
            "--timeout",
            "7",
        ])
        .unwrap();
        let t = c.settings().timeouts;
        assert_eq!(t.command, Duration::from_millis(500));
        assert_eq!(t.data_window, Duration::from_secs(2));
        assert_eq!((t.data_min_rate, t.idle), (0, Duration::from_secs(7)));
        for bad in ["0", "-1", "x", "nan", "inf"] {
            assert!(
                Config::try_parse_from(["smtpsink", "--command-timeout", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
