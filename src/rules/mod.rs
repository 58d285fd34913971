//! Misbehaving on purpose: reply rules, delays, rate limits, greylisting
//! and magic addresses — the [`Policy`] sessions ask (see
//! `proto::server::policy`).
//!
//! Owns: the active [`RuleSet`] (replaced whole by [`Engine::install`], as
//! `PUT /rules` does), per-rule match and hit counts, the token buckets and
//! the greylist, one seeded random generator per session, and the table of
//! rendered replies. Pure: the time comes with each query, nothing here
//! touches a socket or the clock.
//!
//! Decisions, in order: a rate limit that has no token left refuses; then
//! the first rule (in file order) whose stage and matchers match *and*
//! that fires (always, first N matches, every Nth, or with probability p);
//! then, with magic addresses on, the recipient's local part. Otherwise the
//! command proceeds normally.
//!
//! Determinism: a session's generator is seeded from the set's seed and the
//! session's connection number (1 for the first connection since the set was
//! installed), and is drawn from only by probability rules that matched and
//! by random delays, in command order. The same seed and the same traffic
//! give the same decisions; [`session_rng`] lets a test predict them.

pub mod glob;
pub mod limits;
mod magic;
pub mod spec;

use crate::proto::server::{Act, Decision, Interest, Policy, Query, RuleReply, SessionId, Stage};
use glob::Glob;
use limits::{Buckets, Greylist, Kind, Limits};
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use rand_pcg::Pcg64Mcg;
use slab::Slab;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A closed range of counts (the Nth transaction, the Nth connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Lowest, inclusive.
    pub lo: u64,
    /// Highest, inclusive.
    pub hi: u64,
}

impl Span {
    fn contains(self, n: u64) -> bool {
        (self.lo..=self.hi).contains(&n)
    }
}

/// When a matching rule acts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fire {
    /// Every time.
    Always,
    /// For its first N matches, then never ("answer this N times, then
    /// normal").
    First(u64),
    /// On every Nth match.
    Every(u64),
    /// With this probability, drawn from the session's seeded generator.
    Probability(f64),
}

/// A delay before a reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delay {
    /// Always this long.
    Fixed(Duration),
    /// Uniformly between the two.
    Uniform(Duration, Duration),
    /// Log-normal: this median, this sigma (of the underlying normal).
    LogNormal {
        /// The median delay.
        median: Duration,
        /// The spread.
        sigma: f64,
    },
}

/// Longest delay a random distribution may draw.
const MAX_DELAY: Duration = Duration::from_secs(3600);

impl Delay {
    fn sample(self, rng: &mut Pcg64Mcg) -> Duration {
        match self {
            Delay::Fixed(d) => d,
            Delay::Uniform(a, b) if a == b => a,
            Delay::Uniform(a, b) => {
                Duration::from_secs_f64(rng.random_range(a.as_secs_f64()..b.as_secs_f64()))
            }
            Delay::LogNormal { median, sigma } => {
                let mu = median.as_secs_f64().max(1e-9).ln();
                let secs =
                    LogNormal::new(mu, sigma).map_or(median.as_secs_f64(), |d| d.sample(rng));
                // A NaN cannot come from finite parameters; never panic anyway.
                Duration::try_from_secs_f64(secs.clamp(0.0, MAX_DELAY.as_secs_f64()))
                    .unwrap_or(median)
            }
        }
    }
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Only its delay.
    Delay,
    /// This reply (rendered, CRLF included) with this code.
    Reply {
        /// The reply.
        text: Box<[u8]>,
        /// Its code.
        code: u16,
    },
    /// Close without a reply.
    Close,
    /// Close without a reply after this many content octets.
    CloseAfter(u64),
    /// Cap the connection's reading at this many octets per second.
    Throttle(u64),
    /// Answer 250 at the end of the message but keep nothing.
    Drop,
    /// Defer the first try of each client/sender/recipient triple with
    /// `451 4.7.1`; a retry at least this much later passes.
    Greylist(Duration),
}

/// One rule: where it applies, what it matches, when it fires, what it does.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Shown in metrics.
    pub name: String,
    /// `None`: any stage but connect.
    pub stage: Option<Stage>,
    /// Glob on the whole argument (case-insensitive).
    pub address: Option<Glob>,
    /// Glob on the argument's domain (after the last `@`; the whole
    /// argument for HELO/EHLO).
    pub domain: Option<Glob>,
    /// The client's address is in this network.
    pub client: Option<ipnet::IpNet>,
    /// The session's transaction number is in this range.
    pub transaction: Option<Span>,
    /// The connection's number (since the set was installed) is in this range.
    pub connection: Option<Span>,
    /// When it fires.
    pub fire: Fire,
    /// A delay before its reply.
    pub delay: Option<Delay>,
    /// What it does.
    pub action: Action,
}

/// A whole rule set: what a file or the command line says.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// The rules, in order.
    pub rules: Vec<Rule>,
    /// Rate limits.
    pub limits: Limits,
    /// The generators' seed (`None`: the engine's default).
    pub seed: Option<u64>,
    /// Magic recipient addresses on.
    pub magic: bool,
}

impl RuleSet {
    /// Nothing to do at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.limits.is_empty() && !self.magic
    }
}

/// Counts the metrics show besides the per-rule hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounts {
    /// Refused by a rate limit: `[server, client]` by `Kind as usize`.
    pub rate_limited: [[u64; 3]; 2],
    /// Deferred by greylisting.
    pub greylisted: u64,
    /// Greylisted triples that came back in time and passed.
    pub greylist_passed: u64,
    /// Magic addresses that acted.
    pub magic: u64,
}

/// A session's own state.
struct SessionRules {
    number: u64,
    peer: std::net::IpAddr,
    /// Bit `i` (rules 0..64): rule `i` can never match this session (its
    /// client or connection matcher says no), so it is not even looked at.
    skip: u64,
    /// The stages worth asking about for this session.
    stages: u16,
    /// The set `skip` and `stages` were worked out for.
    generation: u32,
    rng: Pcg64Mcg,
    /// What a magic recipient asked for at the end of the message, and
    /// the transaction (`Query::transaction`) it is for.
    at_end: Option<(u32, Decision)>,
}

/// The generator of the `number`th session under `seed`.
pub fn session_rng(seed: u64, number: u64) -> Pcg64Mcg {
    Pcg64Mcg::seed_from_u64(seed ^ number.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The fixed replies rules and limits use.
#[derive(Clone, Copy)]
struct Fixed {
    connection_rate: RuleReply,
    message_rate: RuleReply,
    recipient_rate: RuleReply,
    greylisted: RuleReply,
}

/// The engine: one per event loop, the [`Policy`] its sessions ask.
pub struct Engine {
    set: RuleSet,
    /// Per rule: its reply as interned, if it has one.
    replies: Vec<Option<RuleReply>>,
    /// Per stage: the rules that apply there, in order.
    by_stage: [Vec<Entry>; Stage::COUNT],
    /// The first 64 rules by stage and argument shape (shared with the
    /// loop, which reads it before asking).
    interest: Arc<Interest>,
    /// Bit `Stage as u16`: sessions must ask about that stage.
    stages: u16,
    /// The set has rate limits.
    has_limits: bool,
    /// Stages asked about whatever the rules (limits, the sender, magic).
    base_stages: u16,
    /// Bumped by each `install`: sessions' `skip` refer to rule indices.
    generation: u32,
    matched: Vec<u64>,
    hits: Vec<u64>,
    texts: Vec<Box<[u8]>>,
    interned: HashMap<Box<[u8]>, u32>,
    fixed: Fixed,
    sessions: Slab<SessionRules>,
    shared_rng: Pcg64Mcg,
    connections: u64,
    seed: u64,
    buckets: Buckets,
    greylist: Greylist,
    counts: EngineCounts,
}

/// Distinct reply texts kept: texts are never dropped (a held reply may
/// still name one after a new set is installed), so their number is capped.
pub const MAX_TEXTS: usize = 10_000;

impl Engine {
    /// An engine running `set`; `seed` is used when the set names none.
    /// Fails as [`Engine::install`] does (two rules with one name).
    pub fn new(set: RuleSet, seed: u64, hostname: &str) -> Result<Self, String> {
        let mut e = Self {
            set: RuleSet::default(),
            replies: Vec::new(),
            by_stage: Default::default(),
            interest: Arc::default(),
            stages: 0,
            has_limits: false,
            base_stages: 0,
            generation: 0,
            matched: Vec::new(),
            hits: Vec::new(),
            texts: Vec::new(),
            interned: HashMap::new(),
            fixed: Fixed {
                connection_rate: RuleReply { index: 0, code: 0 },
                message_rate: RuleReply { index: 0, code: 0 },
                recipient_rate: RuleReply { index: 0, code: 0 },
                greylisted: RuleReply { index: 0, code: 0 },
            },
            sessions: Slab::new(),
            shared_rng: session_rng(seed, 0),
            connections: 0,
            seed,
            buckets: Buckets::default(),
            greylist: Greylist::default(),
            counts: EngineCounts::default(),
        };
        let fixed = |e: &mut Self, t: String| {
            let (text, code) = spec::reply_text(&t).unwrap_or_else(|_| (Box::from(&b""[..]), 451));
            e.intern(text, code).unwrap_or(RuleReply { index: 0, code })
        };
        e.fixed = Fixed {
            connection_rate: fixed(
                &mut e,
                format!("421 4.7.0 {hostname} Error: too many connections, try again later"),
            ),
            message_rate: fixed(
                &mut e,
                "451 4.7.1 Error: message rate limit exceeded, try again later".into(),
            ),
            recipient_rate: fixed(
                &mut e,
                "451 4.7.1 Error: recipient rate limit exceeded, try again later".into(),
            ),
            greylisted: fixed(
                &mut e,
                "451 4.7.1 Greylisted, please try again later".into(),
            ),
        };
        e.install(set)?;
        Ok(e)
    }

    /// Replaces the rule set at once: counts of the old rules go, sessions
    /// already open keep their numbers and generators. Fails (and changes
    /// nothing) only when the set would pass [`MAX_TEXTS`] distinct replies.
    pub fn install(&mut self, set: RuleSet) -> Result<(), String> {
        // Check the cap first, so a refused set changes nothing at all.
        let new: std::collections::HashSet<&[u8]> = set
            .rules
            .iter()
            .filter_map(|r| match &r.action {
                Action::Reply { text, .. } if !self.interned.contains_key(text) => Some(&text[..]),
                _ => None,
            })
            .collect();
        if self.texts.len() + new.len() > MAX_TEXTS {
            return Err(format!(
                "more than {MAX_TEXTS} distinct reply texts since start"
            ));
        }
        let mut names = std::collections::HashSet::new();
        if let Some(r) = set.rules.iter().find(|r| !names.insert(r.name.as_str())) {
            return Err(format!("two rules are named {:?}", r.name));
        }
        let mut replies = Vec::with_capacity(set.rules.len());
        for r in &set.rules {
            replies.push(match &r.action {
                Action::Reply { text, code } => Some(self.intern(text.clone(), *code)?),
                _ => None,
            });
        }
        let mut by_stage: [Vec<Entry>; Stage::COUNT] = Default::default();
        for (i, r) in set.rules.iter().enumerate() {
            for (s, list) in STAGE_ORDER.iter().zip(by_stage.iter_mut()) {
                // "any" means every command, not the connect; where a
                // command has no argument, a pattern that cannot match an
                // empty one rules the rule out there.
                // LMTP asks about the end once per recipient, with its path.
                let has_arg = matches!(
                    s,
                    Stage::Helo | Stage::Mail | Stage::Rcpt | Stage::EndOfData
                );
                let arg_ok = has_arg
                    || (r.address.as_ref().is_none_or(|g| g.matches(b""))
                        && r.domain.as_ref().is_none_or(|g| g.matches(b"")));
                let applies = r.stage.map_or(*s != Stage::Connect, |st| st == *s) && arg_ok;
                if applies {
                    list.push(Entry::new(i, r));
                }
            }
        }
        let mut stages = 0u16;
        for (s, list) in STAGE_ORDER.iter().zip(&by_stage) {
            if !list.is_empty() {
                stages |= s.bit();
            }
        }
        let bit = |s: Stage| 1u16 << (s as u16);
        let mut base = 0u16;
        let l = &set.limits;
        for (kind, stage) in [
            (Kind::Connections, Stage::Connect),
            (Kind::Messages, Stage::Mail),
            (Kind::Recipients, Stage::Rcpt),
        ] {
            let i = kind as usize;
            if l.server.get(i).is_some_and(Option::is_some)
                || l.client.get(i).is_some_and(Option::is_some)
            {
                base |= bit(stage);
            }
        }
        let greylists = set
            .rules
            .iter()
            .any(|r| matches!(r.action, Action::Greylist(_)));
        // Greylisting keys on the sender: sessions keep it for the query.
        let needs_sender = greylists || set.magic;
        if set.magic {
            base |= bit(Stage::Rcpt) | bit(Stage::EndOfData);
        }
        // MAIL passes through the session's policy path, where the sender
        // is kept, but is put to the policy only as `interest` says.
        let sender_stage = if needs_sender { bit(Stage::Mail) } else { 0 };
        let stages = with_end(stages | base | sender_stage);
        if let Some(seed) = set.seed {
            self.seed = seed;
        }
        self.matched = vec![0; set.rules.len()];
        self.hits = vec![0; set.rules.len()];
        self.replies = replies;
        self.interest = Arc::new(interest(&set.rules, &by_stage, base, needs_sender));
        self.by_stage = by_stage;
        self.stages = stages;
        self.has_limits = !set.limits.is_empty();
        self.base_stages = base | sender_stage;
        self.generation = self.generation.wrapping_add(1);
        self.connections = 0;
        self.set = set;
        Ok(())
    }

    fn intern(&mut self, text: Box<[u8]>, code: u16) -> Result<RuleReply, String> {
        if let Some(&index) = self.interned.get(&text) {
            return Ok(RuleReply { index, code });
        }
        if self.texts.len() >= MAX_TEXTS {
            return Err(format!(
                "more than {MAX_TEXTS} distinct reply texts since start"
            ));
        }
        let index = u32::try_from(self.texts.len()).unwrap_or(u32::MAX);
        self.texts.push(text.clone());
        self.interned.insert(text, index);
        Ok(RuleReply { index, code })
    }

    /// The set in force.
    pub fn set(&self) -> &RuleSet {
        &self.set
    }

    /// The seed in force.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Each rule's name and how often it fired.
    pub fn hits(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.set
            .rules
            .iter()
            .zip(&self.hits)
            .map(|(r, &n)| (r.name.as_str(), n))
    }

    /// Rate limit, greylist and magic counts.
    pub fn counts(&self) -> EngineCounts {
        self.counts
    }

    /// The counts as JSON (`/stats`, `--json`).
    pub fn json(&self) -> serde_json::Value {
        let hits: serde_json::Map<String, serde_json::Value> = self
            .hits()
            .map(|(n, h)| (n.to_string(), h.into()))
            .collect();
        let k = self.counts;
        serde_json::json!({
            "rules": self.set.rules.len(),
            "seed": self.seed,
            "hits": hits,
            "rate_limited": {"server": k.rate_limited[0], "client": k.rate_limited[1]},
            "greylisted": k.greylisted,
            "greylist_passed": k.greylist_passed,
            "magic": k.magic,
        })
    }

    /// Lines for the final report: each rule's hits and the other counts.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        for (name, n) in self.hits() {
            let _ = writeln!(s, "  rule {name:<20} {n:>10} hits");
        }
        let k = self.counts;
        let limited: u64 = k.rate_limited.iter().flatten().sum();
        if limited > 0 || k.greylisted > 0 || k.magic > 0 {
            let _ = writeln!(
                s,
                "  rate-limited   {limited:>14}  greylisted {} (passed {})  magic {}",
                k.greylisted, k.greylist_passed, k.magic
            );
        }
        s
    }

    /// A copy of the set and its counts, for figures merged across loops
    /// (`--threads`): it decides nothing, and its tables start empty.
    /// `None` only if the set could not be built again, which a set already
    /// installed cannot fail.
    pub fn snapshot(&self) -> Option<Engine> {
        let mut e = Engine::new(self.set.clone(), self.seed, "").ok()?;
        e.merge_counts(self);
        Some(e)
    }

    /// Adds another loop's counts to these (rules are matched by name: a
    /// `PUT /rules` may have reached the loops a moment apart).
    pub fn merge_counts(&mut self, other: &Engine) {
        for (rule, hits) in self.set.rules.iter().zip(self.hits.iter_mut()) {
            if let Some((_, n)) = other.hits().find(|(name, _)| *name == rule.name) {
                *hits += n;
            }
        }
        let (a, b) = (&mut self.counts, other.counts);
        for (ra, rb) in a.rate_limited.iter_mut().zip(b.rate_limited) {
            for (x, y) in ra.iter_mut().zip(rb) {
                *x += y;
            }
        }
        a.greylisted += b.greylisted;
        a.greylist_passed += b.greylist_passed;
        a.magic += b.magic;
    }

    /// Zeroes the counts (`POST /reset`); "first N" rules start over too.
    pub fn reset_counts(&mut self) {
        self.counts = EngineCounts::default();
        self.hits.iter_mut().for_each(|h| *h = 0);
        self.matched.iter_mut().for_each(|m| *m = 0);
    }

    fn limited(&mut self, kind: Kind, q: &Query<'_>) -> Option<Decision> {
        let refusal = self
            .buckets
            .take(&self.set.limits, kind, q.peer.ip(), q.now)
            .err()?;
        if let Some(n) = self
            .counts
            .rate_limited
            .get_mut(usize::from(refusal.per_client))
            .and_then(|row| row.get_mut(kind as usize))
        {
            *n += 1;
        }
        let reply = match kind {
            Kind::Connections => self.fixed.connection_rate,
            Kind::Messages => self.fixed.message_rate,
            Kind::Recipients => self.fixed.recipient_rate,
        };
        Some(Decision {
            delay: None,
            act: Act::Reply(reply),
        })
    }

    /// Greylisting of this query's client/sender/recipient triple: proceed
    /// (a retry at least `wait` after the first try), or the 451.
    fn greylist(&mut self, q: &Query<'_>, wait: Duration) -> Act {
        let key = Self::greylist_key(q.peer, q.sender, q.arg);
        if self.greylist.passes(key, wait, q.now) {
            self.counts.greylist_passed += 1;
            Act::Proceed
        } else {
            self.counts.greylisted += 1;
            Act::Reply(self.fixed.greylisted)
        }
    }

    fn greylist_key(peer: SocketAddr, sender: &[u8], rcpt: &[u8]) -> u64 {
        let mut h = DefaultHasher::new();
        peer.ip().hash(&mut h);
        sender.to_ascii_lowercase().hash(&mut h);
        rcpt.to_ascii_lowercase().hash(&mut h);
        h.finish()
    }

    /// The first rule that matches and fires, as a decision.
    fn ruled(&mut self, q: &Query<'_>) -> Option<Decision> {
        let si = stage_index(q.stage);
        if self.by_stage.get(si)?.is_empty() {
            return None;
        }
        let refit = self
            .sessions
            .get(q.handle as usize)
            .is_some_and(|s| s.generation != self.generation);
        if refit {
            self.refit(q.handle);
        }
        let state = self.sessions.get_mut(q.handle as usize);
        // Rules are narrowed to the address the session connected from; a
        // query for another (XFORWARD's) is matched against all of them.
        let skip = state
            .as_ref()
            .filter(|s| s.peer == q.peer.ip())
            .map_or(0, |s| s.skip);
        let candidates =
            self.interest.rules.get(si).copied().unwrap_or(0) & self.interest.shape(q.arg) & !skip;
        // Rules past the 64th are walked.
        let list = self.by_stage.get(si)?;
        let rest = list
            .get(list.partition_point(|e| e.rule < 64)..)
            .unwrap_or_default();
        if candidates == 0 && rest.is_empty() {
            return None;
        }
        let number = state.as_ref().map_or(0, |s| s.number);
        // A session that began before there was an engine has no state of
        // its own: it shares one generator.
        let rng = match state {
            Some(s) => &mut s.rng,
            None => &mut self.shared_rng,
        };
        let beyond = rest.iter().filter(|e| e.may_match(q.arg)).map(|e| e.rule);
        for i in Bits(candidates).chain(beyond) {
            let Some(rule) = self.set.rules.get(i) else {
                continue;
            };
            if !matches(rule, q, number) {
                continue;
            }
            let Some(m) = self.matched.get_mut(i) else {
                continue;
            };
            *m += 1;
            let fires = match rule.fire {
                Fire::Always => true,
                Fire::First(n) => *m <= n,
                Fire::Every(n) => *m % n == 0,
                Fire::Probability(p) => rng.random::<f64>() < p,
            };
            if !fires {
                continue;
            }
            if let Some(h) = self.hits.get_mut(i) {
                *h += 1;
            }
            let delay = rule.delay.map(|d| d.sample(rng));
            let act = match &rule.action {
                Action::Delay => Act::Proceed,
                Action::Reply { .. } => self
                    .replies
                    .get(i)
                    .copied()
                    .flatten()
                    .map_or(Act::Proceed, Act::Reply),
                Action::Close => Act::Close,
                Action::CloseAfter(n) => Act::CloseAfter(*n),
                Action::Throttle(n) => Act::Throttle(*n),
                Action::Drop => Act::Drop,
                Action::Greylist(wait) => self.greylist(q, *wait),
            };
            return Some(Decision { delay, act });
        }
        None
    }

    fn magic(&mut self, q: &Query<'_>) -> Option<Decision> {
        let handle = q.handle as usize;
        match q.stage {
            Stage::Rcpt => {
                let m = magic::parse(q.arg)?;
                self.counts.magic += 1;
                match m {
                    magic::Magic::Now(d) => Some(self.render(&d)),
                    magic::Magic::AtEnd(d) => {
                        let d = self.render(&d);
                        if let Some(s) = self.sessions.get_mut(handle) {
                            s.at_end = Some((q.transaction, d));
                        }
                        None
                    }
                    magic::Magic::Greylist(wait) => match self.greylist(q, wait) {
                        Act::Proceed => None,
                        act => Some(Decision { delay: None, act }),
                    },
                }
            }
            // LMTP: asked per recipient, whose own "at the end" effect
            // answers it alone.
            Stage::EndOfData if !q.arg.is_empty() => match magic::parse(q.arg)? {
                magic::Magic::AtEnd(d) => Some(self.render(&d)),
                _ => None,
            },
            Stage::EndOfData => {
                // Left by a recipient of this transaction, not of one that
                // was reset before its end.
                let (t, d) = self.sessions.get_mut(handle)?.at_end.take()?;
                (t == q.transaction).then_some(d)
            }
            _ => None,
        }
    }

    fn render(&mut self, d: &magic::Effect) -> Decision {
        let act = match d.act {
            magic::Do::Proceed => Act::Proceed,
            magic::Do::Reply(code, ref text) => {
                let (t, c) = spec::reply_text(&format!("{code} {text}"))
                    .unwrap_or_else(|_| (Box::from(&b"451 4.3.0 magic\r\n"[..]), 451));
                self.intern(t, c).map_or(Act::Proceed, Act::Reply)
            }
            magic::Do::Close => Act::Close,
            magic::Do::Drop => Act::Drop,
        };
        Decision {
            delay: d.delay,
            act,
        }
    }
}

/// `stages` plus the end stage where BDAT is asked about: a refused chunk
/// ends its message through the end stage.
fn with_end(stages: u16) -> u16 {
    if stages & Stage::Bdat.bit() != 0 {
        stages | Stage::EndOfData.bit()
    } else {
        stages
    }
}

impl Engine {
    /// Works out, for the set in force, which rules can never match
    /// session `handle` (client and connection matchers are fixed for a
    /// session) and so which stages are worth asking about; once per set.
    fn refit(&mut self, handle: u32) {
        let generation = self.generation;
        let Some(s) = self.sessions.get_mut(handle as usize) else {
            return;
        };
        if s.generation == generation {
            return;
        }
        let mut skip = 0u64;
        for (i, r) in self.set.rules.iter().enumerate().take(64) {
            let client_no = r.client.is_some_and(|n| !n.contains(&s.peer));
            let conn_no = r.connection.is_some_and(|c| !c.contains(s.number));
            if client_no || conn_no {
                skip |= 1 << i;
            }
        }
        let mut stages = self.base_stages;
        for (stage, list) in STAGE_ORDER.iter().zip(&self.by_stage) {
            if list
                .iter()
                .any(|e| e.rule >= 64 || (skip >> e.rule) & 1 == 0)
            {
                stages |= stage.bit();
            }
        }
        s.skip = skip;
        s.stages = with_end(stages);
        s.generation = generation;
    }
}

/// The stages in `Stage as usize` order.
const STAGE_ORDER: [Stage; Stage::COUNT] = [
    Stage::Connect,
    Stage::Helo,
    Stage::Mail,
    Stage::Rcpt,
    Stage::Data,
    Stage::EndOfData,
    Stage::Bdat,
    Stage::Rset,
    Stage::Quit,
    Stage::Other,
];

fn stage_index(s: Stage) -> usize {
    s as usize
}

fn matches(rule: &Rule, q: &Query<'_>, number: u64) -> bool {
    if rule.client.is_some_and(|n| !n.contains(&q.peer.ip())) {
        return false;
    }
    if rule
        .transaction
        .is_some_and(|s| !s.contains(u64::from(q.transaction)))
    {
        return false;
    }
    if rule.connection.is_some_and(|s| !s.contains(number)) {
        return false;
    }
    rule.address.as_ref().is_none_or(|g| g.matches(q.arg))
        && rule.domain.as_ref().is_none_or(|g| g.matches(domain_of(q)))
}

/// The argument's domain: after the last `@`, the whole of a HELO's.
fn domain_of<'a>(q: &Query<'a>) -> &'a [u8] {
    match q.stage {
        Stage::Helo => q.arg,
        _ => q
            .arg
            .iter()
            .rposition(|&b| b == b'@')
            .and_then(|at| q.arg.get(at + 1..))
            .unwrap_or_default(),
    }
}

/// The first 64 rules (bit `i`: rule `i`) by stage and by the bytes an
/// argument must begin and end with (see [`Interest`]); stages with rules
/// past the 64th, and `base`, are asked about whatever the argument.
fn interest(
    rules: &[Rule],
    by_stage: &[Vec<Entry>; Stage::COUNT],
    base: u16,
    sender: bool,
) -> Interest {
    let mut n = Interest {
        always: base,
        sender,
        ..Interest::default()
    };
    for (i, r) in rules.iter().enumerate().take(64) {
        let e = Entry::new(i, r);
        let bit = 1u64 << i;
        for b in 0..=255u8 {
            let slot = usize::from(b);
            let fits = |want: u8| want == 0 || want == b;
            if fits(e.first) {
                n.first[slot] |= bit;
            }
            if fits(e.second) {
                n.second[slot] |= bit;
            }
            if fits(e.last) {
                n.last[slot] |= bit;
            }
        }
        if e.min_len == 0 {
            n.empty |= bit;
        }
    }
    for ((stage, mask), list) in STAGE_ORDER.iter().zip(&mut n.rules).zip(by_stage) {
        for e in list {
            match e.rule {
                i @ 0..64 => *mask |= 1 << i,
                _ => n.always |= stage.bit(),
            }
        }
    }
    // A refused chunk ends its message through the end stage.
    if n.rules.get(Stage::Bdat as usize).is_some_and(|&r| r != 0) {
        n.always |= with_end(Stage::Bdat.bit());
    }
    n
}

/// The set bits of a mask, lowest first.
struct Bits(u64);

impl Iterator for Bits {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(i)
    }
}

/// A rule as a stage's list holds it, with a pre-check that turns most
/// arguments it cannot match away in a few instructions, before any glob
/// runs: rules that match nothing are the common case.
#[derive(Debug, Clone, Copy)]
struct Entry {
    rule: usize,
    /// The least argument length its patterns allow.
    min_len: usize,
    /// The argument's first, second and last bytes, lower-cased (0: any).
    first: u8,
    second: u8,
    last: u8,
}

impl Entry {
    fn new(rule: usize, r: &Rule) -> Self {
        let (a_len, first, second, a_last) = r.address.as_ref().map_or((0, 0, 0, 0), Glob::shape);
        // The domain is a tail of the argument; a pattern that needs a
        // non-empty domain pins the argument's last byte too.
        let (d_len, _, _, d_last) = r.domain.as_ref().map_or((0, 0, 0, 0), Glob::shape);
        Self {
            rule,
            min_len: a_len.max(d_len),
            first,
            second,
            last: if a_last != 0 { a_last } else { d_last },
        }
    }

    #[inline]
    fn may_match(&self, arg: &[u8]) -> bool {
        let byte = |b: Option<&u8>, want: u8| {
            want == 0 || b.is_some_and(|b| b.to_ascii_lowercase() == want)
        };
        arg.len() >= self.min_len
            && byte(arg.first(), self.first)
            && byte(arg.get(1), self.second)
            && byte(arg.last(), self.last)
    }
}

impl Policy for Engine {
    fn open(&mut self, _id: SessionId, peer: SocketAddr, _now: Instant) -> u32 {
        self.connections += 1;
        let number = self.connections;
        let key = self.sessions.insert(SessionRules {
            number,
            peer: peer.ip(),
            skip: 0,
            stages: self.stages,
            generation: self.generation.wrapping_sub(1),
            rng: session_rng(self.seed, number),
            at_end: None,
        });
        let handle = u32::try_from(key).unwrap_or(u32::MAX);
        self.refit(handle);
        handle
    }

    fn session_stages(&mut self, handle: u32) -> u16 {
        self.refit(handle);
        self.sessions
            .get(handle as usize)
            .map_or(self.stages, |s| s.stages)
    }

    fn session_rules(&mut self, handle: u32) -> u64 {
        self.refit(handle);
        self.sessions
            .get(handle as usize)
            .map_or(u64::MAX, |s| !s.skip)
    }

    fn generation(&self) -> u32 {
        self.generation
    }

    fn interest(&self) -> Option<Arc<Interest>> {
        Some(Arc::clone(&self.interest))
    }

    fn decide(&mut self, q: &Query<'_>) -> Decision {
        let kind = match q.stage {
            Stage::Connect => Some(Kind::Connections),
            Stage::Mail => Some(Kind::Messages),
            Stage::Rcpt => Some(Kind::Recipients),
            _ => None,
        };
        if self.has_limits {
            if let Some(d) = kind.and_then(|k| self.limited(k, q)) {
                return d;
            }
        }
        if let Some(d) = self.ruled(q) {
            return d;
        }
        if self.set.magic {
            if let Some(d) = self.magic(q) {
                return d;
            }
        }
        Decision::PROCEED
    }

    fn text(&self, index: u32) -> &[u8] {
        self.texts.get(index as usize).map_or(
            b"451 4.3.0 Error: local error in processing\r\n",
            |t| &t[..],
        )
    }

    fn closed(&mut self, handle: u32) {
        self.sessions.try_remove(handle as usize);
    }

    fn stages(&self) -> u16 {
        self.stages
    }
}

#[cfg(test)]
mod tests;
