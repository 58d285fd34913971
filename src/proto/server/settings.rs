//! Server-wide protocol settings, shared by every session of a server.
//!
//! Owns: the limits a session enforces, its timeouts, the reply texts
//! (rendered once at start, each replaceable), and per-verb settings — the
//! "flags on a row" of the verb table (smtp-sink's command table), today a
//! delay before the reply. Sessions only read these; nothing here changes
//! while a server runs.

use super::super::command::Verb;
use super::super::forward::Kind;
use super::super::reply::{extensions, BadReply, Offer, Replies, ReplyId};
use super::auth::{Users, KEYWORD};
use std::sync::Arc;
use std::time::Duration;

/// What a session offers of TLS and AUTH.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// STARTTLS is offered (the loop has a TLS configuration).
    pub starttls: bool,
    /// MAIL before STARTTLS gets `530 5.7.0` (`--require-tls`).
    pub require_tls: bool,
    /// AUTH, if offered at all.
    pub auth: Option<AuthOffer>,
}

/// How AUTH is offered.
#[derive(Debug, Clone)]
pub struct AuthOffer {
    /// Also before TLS (`--auth-plaintext`); otherwise only on a secured
    /// session (RFC 4954 14: plaintext passwords only under TLS).
    pub plaintext: bool,
    /// Who may log in.
    pub users: Arc<Users>,
}

/// How long a client may take, and how slowly it may send (the defence
/// against slow clients that would hold a connection slot forever; the model
/// is Apache's `mod_reqtimeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// No byte from the client, and no reply taken by it, for this long:
    /// `421 4.4.2` and close (RFC 5321 4.5.3.2.7 asks for at least 5 minutes).
    pub idle: Duration,
    /// A command line must be complete this long after its first byte,
    /// however steadily its bytes trickle in.
    pub command: Duration,
    /// Message content (DATA, BDAT chunks) must arrive at no less than
    /// `data_min_rate` octets per second, measured over windows of
    /// `data_window`; 0 turns the check off.
    pub data_min_rate: u64,
    /// See `data_min_rate`.
    pub data_window: Duration,
}

impl Default for Timeouts {
    /// 300 s idle, 60 s per command line, 500 octets/s over 30 s windows:
    /// an MTA writes a command in one segment and streams content at wire
    /// speed, so none of these touches a real one.
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(300),
            command: Duration::from_secs(60),
            data_min_rate: 500,
            data_window: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// Octets a data window must bring in (saturating).
    pub fn window_quota(&self) -> u64 {
        let ms = u64::try_from(self.data_window.as_millis()).unwrap_or(u64::MAX);
        self.data_min_rate.saturating_mul(ms) / 1000
    }
}

/// Everything a session needs to know about its server.
// Independent switches, one per option.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone)]
pub struct Settings {
    /// The server's name (in the greeting, HELO/EHLO and 421 replies).
    pub hostname: String,
    /// Every reply text; [`Settings::set_reply`] replaces one.
    pub replies: Replies,
    /// Largest accepted message body, in octets (advertised by SIZE).
    pub max_message_size: u64,
    /// Recipients per transaction; the next gets 452 4.5.3.
    pub max_recipients: u32,
    /// Longest command line, CRLF included (RFC 5321: at least 512).
    pub max_line: usize,
    /// Reject (550 5.5.2) DATA bodies holding a bare LF instead of passing them.
    pub reject_bare_lf: bool,
    /// How long and how slowly clients may take.
    pub timeouts: Timeouts,
    /// After this many 4xx/5xx replies in one session: 421 4.7.0 and close
    /// (Postfix's `smtpd_hard_error_limit`). 0: no limit.
    pub max_errors: u32,
    /// Transactions one session may begin; the next MAIL gets 421 4.7.0
    /// and the connection closes (Exim's `smtp_accept_max_per_connection`).
    /// 0: no limit.
    pub max_transactions: u32,
    /// Per verb (indexed by `Verb as usize`): hold its reply this long.
    delays: [Option<Duration>; Verb::COUNT],
    /// Some verb has a delay (spares the lookup on every reply).
    any_delay: bool,
    /// STARTTLS and AUTH; see [`Settings::set_security`].
    pub security: Security,
    /// XCLIENT is offered to `--trusted` clients (see
    /// [`Settings::set_forwarding`]).
    pub xclient: bool,
    /// XFORWARD is offered to `--trusted` clients.
    pub xforward: bool,
}

impl Settings {
    /// The standard settings for `hostname`, with default timeouts.
    pub fn new(
        hostname: &str,
        max_message_size: u64,
        max_recipients: u32,
        max_line: usize,
    ) -> Self {
        Self {
            hostname: hostname.to_string(),
            replies: Replies::new(hostname, &extensions(max_message_size)),
            max_message_size,
            max_recipients,
            max_line,
            reject_bare_lf: false,
            timeouts: Timeouts::default(),
            max_errors: 0,
            max_transactions: 0,
            delays: [None; Verb::COUNT],
            any_delay: false,
            security: Security::default(),
            xclient: false,
            xforward: false,
        }
    }

    /// Offers STARTTLS and AUTH as `security` says: the EHLO blocks are
    /// rendered again (STARTTLS only before TLS, RFC 3207 4.2; AUTH only
    /// after it unless offered in plaintext).
    pub fn set_security(&mut self, security: Security) {
        self.security = security;
        self.render_ehlo();
    }

    /// Offers XCLIENT and XFORWARD (Postfix's) to `--trusted` clients: the
    /// EHLO blocks are rendered again.
    pub fn set_forwarding(&mut self, xclient: bool, xforward: bool) {
        self.xclient = xclient;
        self.xforward = xforward;
        self.render_ehlo();
    }

    fn render_ehlo(&mut self) {
        let mut ext = extensions(self.max_message_size);
        if self.security.starttls {
            ext.push(("STARTTLS".into(), Offer::BeforeTls));
        }
        if let Some(a) = &self.security.auth {
            let offer = if a.plaintext {
                Offer::Always
            } else {
                Offer::AfterTls
            };
            ext.push((KEYWORD.into(), offer));
        }
        for (on, kind) in [
            (self.xclient, Kind::Xclient),
            (self.xforward, Kind::Xforward),
        ] {
            if on {
                ext.push((kind.ehlo_line(), Offer::Trusted));
            }
        }
        self.replies.render_ehlo(&self.hostname, &ext);
    }

    /// Whether AUTH is offered on a session that is (or is not) secured.
    #[inline]
    pub fn offers_auth(&self, secure: bool) -> bool {
        self.security
            .auth
            .as_ref()
            .is_some_and(|a| secure || a.plaintext)
    }

    /// Replaces the text of one reply (see [`Replies::set`]).
    pub fn set_reply(&mut self, id: ReplyId, text: &str) -> Result<(), BadReply> {
        self.replies.set(id, text)
    }

    /// Holds every reply to `verb` for `delay` before sending it; the
    /// session reads nothing more from that client meanwhile. `Duration::ZERO`
    /// removes the delay.
    pub fn set_delay(&mut self, verb: Verb, delay: Duration) {
        if let Some(d) = self.delays.get_mut(verb as usize) {
            *d = (!delay.is_zero()).then_some(delay);
        }
        self.any_delay = self.delays.iter().any(Option::is_some);
    }

    /// True when some verb has a delay.
    #[inline]
    pub fn has_delays(&self) -> bool {
        self.any_delay
    }

    /// The delay before replies to `verb`, if any.
    #[inline]
    pub fn delay(&self, verb: Verb) -> Option<Duration> {
        self.delays.get(verb as usize).copied().flatten()
    }
}
