//! Rule sets as people write them: a TOML file (`--rules FILE`, `PUT
//! /rules`) and the short command-line forms (`--reply rcpt:550:0.1`).
//! Both go through [`RuleSpec`], so they mean the same and are checked the
//! same; every mistake in a file is reported with its line.
//!
//! ```toml
//! seed = 42                      # same seed, same traffic: same decisions
//! magic_addresses = true         # reject550@..., delay2s@..., see README
//!
//! [limits]                       # token buckets: N/s, N/m or N/h
//! connections = "100/s"          # whole server (421 4.7.0 past it)
//! client_messages = "10/m"       # per client address (451 4.7.1)
//!
//! [[rule]]
//! name = "bad-domain"            # shown in metrics (default: rule-N)
//! stage = "rcpt"                 # connect helo mail rcpt data end bdat rset quit other any
//! domain = "*.invalid"           # or address = "bounce-*@example.com"; client = "10.0.0.0/8"
//! transaction = "2-"             # Nth transaction of the session; connection = "3" (Nth connection)
//! probability = 0.1              # or first = 3, or every = 2 (default: always)
//! reply = "550 5.1.1 No such user"
//! delay = "100ms..2s"            # "2s", uniform "a..b", "lognormal 200ms 0.5"
//! ```
//! Actions (at most one besides `delay`): `reply`, `close = true`,
//! `close_after = BYTES`, `throttle = BYTES_PER_SEC`, `drop = true`,
//! `greylist = "60s"`.

use super::glob::Glob;
use super::limits::{Kind, Limits, Rate};
use super::{Action, Delay, Fire, Rule, RuleSet, Span};
use crate::proto::reply::{self, Parsed};
use crate::proto::server::Stage;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// The file's top level.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    seed: Option<u64>,
    magic_addresses: Option<bool>,
    limits: Option<LimitsSpec>,
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    connections: Option<Spanned<String>>,
    messages: Option<Spanned<String>>,
    recipients: Option<Spanned<String>>,
    client_connections: Option<Spanned<String>>,
    client_messages: Option<Spanned<String>>,
    client_recipients: Option<Spanned<String>>,
}

/// A count matcher in a file: `3`, `"3"`, `"2-5"` or `"2-"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum CountSpec {
    One(u64),
    Text(String),
}

/// One rule as written; [`RuleSpec::build`] checks and compiles it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    name: Option<String>,
    stage: String,
    address: Option<String>,
    domain: Option<String>,
    client: Option<String>,
    transaction: Option<CountSpec>,
    connection: Option<CountSpec>,
    first: Option<u64>,
    every: Option<u64>,
    probability: Option<f64>,
    reply: Option<String>,
    close: Option<bool>,
    close_after: Option<u64>,
    throttle: Option<u64>,
    drop: Option<bool>,
    greylist: Option<String>,
    delay: Option<String>,
}

/// The stage names, as in files and on the command line.
pub const STAGES: &str = "connect, helo, mail, rcpt, data, end, bdat, rset, quit, other, any";

fn stage(name: &str) -> Result<Option<Stage>, String> {
    Ok(Some(match name.to_ascii_lowercase().as_str() {
        "connect" => Stage::Connect,
        "helo" | "ehlo" => Stage::Helo,
        "mail" => Stage::Mail,
        "rcpt" => Stage::Rcpt,
        "data" => Stage::Data,
        "end" | "eod" | "dot" => Stage::EndOfData,
        "bdat" => Stage::Bdat,
        "rset" => Stage::Rset,
        "quit" => Stage::Quit,
        "other" => Stage::Other,
        "any" => return Ok(None),
        _ => return Err(format!("unknown stage {name:?} (one of {STAGES})")),
    }))
}

/// A duration: a number with a unit, `ms`, `s`, `m` or `h` (`1.5s`).
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("duration {s:?}: expected a number and a unit (ms, s, m, h)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("duration {s:?}: unit {u:?} is not ms, s, m or h")),
    };
    if !(0.0..=86_400.0 * 7.0).contains(&secs) {
        return Err(format!("duration {s:?}: at most a week"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn delay(s: &str) -> Result<Delay, String> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("lognormal") {
        let mut parts = rest.split_whitespace();
        let (Some(median), Some(sigma), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "delay {s:?}: expected \"lognormal MEDIAN SIGMA\", e.g. \"lognormal 200ms 0.5\""
            ));
        };
        let sigma: f64 = sigma
            .parse()
            .ok()
            .filter(|v: &f64| (0.0..=10.0).contains(v))
            .ok_or_else(|| format!("delay {s:?}: sigma must be a number from 0 to 10"))?;
        return Ok(Delay::LogNormal {
            median: duration(median)?,
            sigma,
        });
    }
    if let Some((a, b)) = t.split_once("..") {
        let (a, b) = (duration(a)?, duration(b)?);
        if a > b {
            return Err(format!("delay {s:?}: the range is empty"));
        }
        return Ok(Delay::Uniform(a, b));
    }
    Ok(Delay::Fixed(duration(t)?))
}

fn span(c: &CountSpec) -> Result<Span, String> {
    let text = match c {
        CountSpec::One(n) => return Ok(Span { lo: *n, hi: *n }),
        CountSpec::Text(t) => t.trim(),
    };
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("count {text:?}: expected N, \"N-M\" or \"N-\""))
    };
    match text.split_once('-') {
        None => num(text).map(|n| Span { lo: n, hi: n }),
        Some((lo, "")) => num(lo).map(|lo| Span { lo, hi: u64::MAX }),
        Some((lo, hi)) => {
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo > hi {
                return Err(format!("count {text:?}: the range is empty"));
            }
            Ok(Span { lo, hi })
        }
    }
}

/// The default text for a bare code: an enhanced code of its class.
fn default_text(code: u16) -> String {
    match code / 100 {
        2 => format!("{code} 2.0.0 Ok (smtpsink rule)"),
        3 => format!("{code} Go ahead (smtpsink rule)"),
        4 if code == 421 => format!(
            "{code} 4.3.0 Service not available, closing transmission channel (smtpsink rule)"
        ),
        4 => format!("{code} 4.3.0 Temporary failure (smtpsink rule)"),
        _ => format!("{code} 5.0.0 Refused (smtpsink rule)"),
    }
}

/// A reply as written: `550`, `550 5.1.1 No such user`, or lines separated
/// by newlines (the code is added to lines that lack it). Rendered with
/// CRLFs and checked as a client would parse it.
pub fn reply_text(s: &str) -> Result<(Box<[u8]>, u16), String> {
    let t = s.trim();
    let code: u16 = t
        .get(..3)
        .and_then(|c| c.parse().ok())
        .filter(|c| (200..600).contains(c))
        .ok_or_else(|| format!("reply {s:?}: must start with a code from 200 to 599"))?;
    let full = if t.len() == 3 {
        default_text(code)
    } else {
        t.to_string()
    };
    let lines: Vec<&str> = full.lines().map(str::trim_end).collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        let body = line
            .strip_prefix(&code.to_string())
            .map_or(*line, |r| r.trim_start_matches(['-', ' ']));
        out.extend_from_slice(code.to_string().as_bytes());
        out.push(if last { b' ' } else { b'-' });
        out.extend_from_slice(body.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if out.len() > 4096 || t.bytes().any(|b| b < 0x20 && b != b'\n' && b != b'\r') {
        return Err(format!("reply {s:?}: too long or has control characters"));
    }
    match reply::parse(&out) {
        Parsed::Complete { len, .. } if len == out.len() => Ok((out.into_boxed_slice(), code)),
        _ => Err(format!("reply {s:?}: not a well-formed SMTP reply")),
    }
}

impl RuleSpec {
    /// Checks the rule and compiles it; `index` names an unnamed rule.
    pub fn build(&self, index: usize) -> Result<Rule, String> {
        let stage = stage(&self.stage)?;
        let glob = |p: &Option<String>| p.as_deref().map(Glob::new);
        let client = self
            .client
            .as_deref()
            .map(|c| {
                c.parse::<ipnet::IpNet>()
                    .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("client {c:?}: expected an address or a CIDR network"))
            })
            .transpose()?;
        let fire = match (self.first, self.every, self.probability) {
            (None, None, None) => Fire::Always,
            (Some(n), None, None) if n > 0 => Fire::First(n),
            (None, Some(n), None) if n > 0 => Fire::Every(n),
            (None, None, Some(p)) if (0.0..=1.0).contains(&p) => Fire::Probability(p),
            (None, None, Some(p)) => return Err(format!("probability {p}: must be from 0 to 1")),
            (Some(_) | None, Some(_) | None, Some(_) | None)
                if [
                    self.first.is_some(),
                    self.every.is_some(),
                    self.probability.is_some(),
                ]
                .iter()
                .filter(|x| **x)
                .count()
                    > 1 =>
            {
                return Err("at most one of first, every, probability".into())
            }
            _ => return Err("first and every must be at least 1".into()),
        };
        let mut actions = Vec::new();
        if let Some(r) = &self.reply {
            let (text, code) = reply_text(r)?;
            success_fits(stage, code)?;
            actions.push(Action::Reply { text, code });
        }
        if self.close == Some(true) {
            actions.push(Action::Close);
        }
        if let Some(n) = self.close_after {
            if !matches!(stage, Some(Stage::Mail | Stage::Data | Stage::Bdat) | None) {
                return Err("close_after works at the mail, data and bdat stages".into());
            }
            actions.push(Action::CloseAfter(n));
        }
        if let Some(n) = self.throttle {
            if n == 0 {
                return Err("throttle must be at least 1 octet per second".into());
            }
            actions.push(Action::Throttle(n));
        }
        if self.drop == Some(true) {
            actions.push(Action::Drop);
        }
        if let Some(g) = &self.greylist {
            actions.push(Action::Greylist(duration(g)?));
        }
        let delay = self.delay.as_deref().map(delay).transpose()?;
        let action =
            match actions.len() {
                0 if delay.is_some() => Action::Delay,
                0 => return Err(
                    "no action: give reply, close, close_after, throttle, drop, greylist or delay"
                        .into(),
                ),
                1 => actions.remove(0),
                _ => return Err("more than one action (delay may go with any one)".into()),
            };
        Ok(Rule {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("rule-{}", index + 1)),
            stage,
            address: glob(&self.address),
            domain: glob(&self.domain),
            client,
            transaction: self.transaction.as_ref().map(span).transpose()?,
            connection: self.connection.as_ref().map(span).transpose()?,
            fire,
            delay,
            action,
        })
    }
}

/// A success reply may replace only a success of the same kind: its code
/// tells the client what happens next (a 354 after RCPT, or a 250 after
/// DATA, would put client and server out of step).
fn success_fits(stage: Option<Stage>, code: u16) -> Result<(), String> {
    if code >= 400 {
        return Ok(());
    }
    let fits = match stage {
        Some(Stage::Connect) => code == 220,
        Some(Stage::Data) => code == 354,
        Some(Stage::Quit) => code == 221,
        Some(
            Stage::Helo
            | Stage::Mail
            | Stage::Rcpt
            | Stage::EndOfData
            | Stage::Bdat
            | Stage::Rset
            | Stage::Other,
        ) => (200..300).contains(&code) && code != 220 && code != 221,
        // "any" covers DATA and QUIT too: no one success code fits all.
        None => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "a {code} reply does not fit this stage: a success reply must be 220 at connect, \
             354 at data, 221 at quit, another 2xx elsewhere, and none at \"any\""
        ))
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Parses a rules file; errors read `line L, column C: what is wrong`.
pub fn parse_file(text: &str) -> Result<RuleSet, String> {
    let at = |offset: usize, msg: &str| {
        let (l, c) = line_col(text, offset);
        format!("line {l}, column {c}: {msg}")
    };
    let spec: FileSpec = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        match e.span() {
            Some(sp) => at(sp.start, &msg),
            None => msg,
        }
    })?;
    let mut set = RuleSet {
        seed: spec.seed,
        magic: spec.magic_addresses.unwrap_or(false),
        ..RuleSet::default()
    };
    if let Some(l) = &spec.limits {
        let fields = [
            (&l.connections, Kind::Connections, false),
            (&l.messages, Kind::Messages, false),
            (&l.recipients, Kind::Recipients, false),
            (&l.client_connections, Kind::Connections, true),
            (&l.client_messages, Kind::Messages, true),
            (&l.client_recipients, Kind::Recipients, true),
        ];
        for (field, kind, per_client) in fields {
            if let Some(v) = field {
                let rate = Rate::parse(v.get_ref()).map_err(|e| at(v.span().start, &e))?;
                set.limits.set(kind, per_client, rate);
            }
        }
    }
    for (i, r) in spec.rule.iter().enumerate() {
        let rule = r
            .get_ref()
            .build(i)
            .map_err(|e| at(r.span().start, &format!("rule {}: {e}", i + 1)))?;
        if set.rules.iter().any(|o| o.name == rule.name) {
            let msg = format!("rule {}: another rule is named {:?}", i + 1, rule.name);
            return Err(at(r.span().start, &msg));
        }
        set.rules.push(rule);
    }
    Ok(set)
}

impl Limits {
    /// Sets one limit.
    pub fn set(&mut self, kind: Kind, per_client: bool, rate: Rate) {
        let table = if per_client {
            &mut self.client
        } else {
            &mut self.server
        };
        if let Some(slot) = table.get_mut(kind as usize) {
            *slot = Some(rate);
        }
    }
}

/// `--rate-limit KIND=RATE`: KIND is `connections`, `messages` or
/// `recipients`, `client-` in front for per client address (short forms
/// `conn`, `msg`, `rcpt`).
pub fn parse_rate_limit(s: &str) -> Result<(Kind, bool, Rate), String> {
    let (kind, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KIND=RATE, e.g. client-conn=5/s"))?;
    let (per_client, k) = match kind.trim().strip_prefix("client-") {
        Some(k) => (true, k),
        None => (false, kind.trim()),
    };
    let kind = match k {
        "connections" | "conn" => Kind::Connections,
        "messages" | "msg" => Kind::Messages,
        "recipients" | "rcpt" => Kind::Recipients,
        _ => {
            return Err(format!(
                "{s:?}: kind {k:?} is not connections, messages or recipients"
            ))
        }
    };
    Ok((kind, per_client, Rate::parse(rate)?))
}

/// Splits `STAGE:REST[:P]`: the stage, the middle, and a trailing
/// probability when the last part is a number from 0 to 1.
fn stage_rest_p(s: &str) -> (String, String, Option<f64>) {
    let (stage, rest) = s.split_once(':').unwrap_or((s, ""));
    let (mid, p) = match rest.rsplit_once(':') {
        Some((m, p)) => match p.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => (m, Some(v)),
            _ => (rest, None),
        },
        None => (rest, None),
    };
    (stage.trim().to_string(), mid.to_string(), p)
}

/// The short command-line forms, each one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// `--reply STAGE:REPLY[:P]`: `rcpt:550:0.1`, `mail:451 4.7.1 Later`.
    Reply,
    /// `--delay STAGE:DELAY[:P]`: `data:2s`, `rcpt:100ms..1s:0.5`.
    Delay,
    /// `--close STAGE[:P]`: close without a reply.
    Close,
}

/// Parses one short form into a rule spec.
pub fn parse_short(kind: Short, s: &str) -> Result<RuleSpec, String> {
    let (stage, mid, p) = stage_rest_p(s);
    let mut spec = RuleSpec {
        stage,
        probability: p,
        ..RuleSpec::default()
    };
    match kind {
        Short::Reply if !mid.is_empty() => spec.reply = Some(mid),
        Short::Delay if !mid.is_empty() => spec.delay = Some(mid),
        Short::Close if mid.is_empty() => spec.close = Some(true),
        Short::Reply => {
            return Err(format!(
                "{s:?}: expected STAGE:REPLY[:P], e.g. rcpt:550:0.1"
            ))
        }
        Short::Delay => return Err(format!("{s:?}: expected STAGE:DELAY[:P], e.g. data:2s")),
        Short::Close => return Err(format!("{s:?}: expected STAGE[:P], e.g. data:0.5")),
    }
    // Checked now, so a mistake is an error at start, not later.
    spec.build(0)?;
    Ok(spec)
}

/// A rule spec for one action at one stage (the other short flags).
pub fn simple(stage: &str, probability: Option<f64>) -> RuleSpec {
    RuleSpec {
        stage: stage.into(),
        probability,
        ..RuleSpec::default()
    }
}

impl RuleSpec {
    /// With `close_after`.
    #[must_use]
    pub fn close_after(mut self, n: u64) -> Self {
        self.close_after = Some(n);
        self
    }
    /// With `throttle`.
    #[must_use]
    pub fn throttle(mut self, n: u64) -> Self {
        self.throttle = Some(n);
        self
    }
    /// With `drop`.
    #[must_use]
    pub fn drop_it(mut self) -> Self {
        self.drop = Some(true);
        self
    }
    /// With `greylist`.
    #[must_use]
    pub fn greylist(mut self, d: &str) -> Self {
        self.greylist = Some(d.into());
        self
    }
    /// Named.
    #[must_use]
    pub fn named(mut self, n: &str) -> Self {
        self.name = Some(n.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_render_with_codes_on_every_line() {
        let (t, c) = reply_text("550 5.1.1 No such user").unwrap();
        assert_eq!((&*t, c), (&b"550 5.1.1 No such user\r\n"[..], 550));
        let (t, _) = reply_text("451 4.7.1 first\nsecond").unwrap();
        assert_eq!(&*t, b"451-4.7.1 first\r\n451 second\r\n");
        let (t, c) = reply_text("421").unwrap();
        assert!(t.starts_with(b"421 4.3.0 "));
        assert_eq!(c, 421);
        for bad in ["", "99 x", "600 x", "abc", "550\0x"] {
            assert!(reply_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_delays_and_counts() {
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert!(duration("5").is_err() && duration("1d").is_err() && duration("ms").is_err());
        assert_eq!(
            delay("100ms..2s").unwrap(),
            Delay::Uniform(Duration::from_millis(100), Duration::from_secs(2))
        );
        assert_eq!(
            delay("lognormal 200ms 0.5").unwrap(),
            Delay::LogNormal {
                median: Duration::from_millis(200),
                sigma: 0.5
            }
        );
        assert!(delay("2s..1s").is_err() && delay("lognormal 1s").is_err());
        assert_eq!(
            span(&CountSpec::Text("2-".into())).unwrap(),
            Span {
                lo: 2,
                hi: u64::MAX
            }
        );
        assert_eq!(span(&CountSpec::One(3)).unwrap(), Span { lo: 3, hi: 3 });
        assert!(span(&CountSpec::Text("5-2".into())).is_err());
    }

    #[test]
    fn file_errors_name_their_line() {
        let text = "seed = 1\n\n[[rule]]\nstage = \"rcp\"\nreply = \"550\"\n";
        let e = parse_file(text).unwrap_err();
        assert!(e.starts_with("line 3,"), "{e}");
        assert!(e.contains("unknown stage \"rcp\""), "{e}");
        let e = parse_file("[[rule]]\nstage = \"rcpt\"\nreply = 550\n").unwrap_err();
        assert!(e.starts_with("line 3, column 9:"), "{e}");
        let e = parse_file("[limits]\nconnections = \"5/d\"\n").unwrap_err();
        assert!(e.starts_with("line 2, column 15:"), "{e}");
        let e = parse_file("[[rule]]\nstage = \"data\"\n").unwrap_err();
        assert!(e.contains("no action"), "{e}");
        let e = parse_file("[[rule]]\nstage = \"rcpt\"\nclose_after = 5\n").unwrap_err();
        assert!(e.contains("close_after"), "{e}");
        let e = parse_file("bogus = 1\n").unwrap_err();
        assert!(e.starts_with("line 1,"), "{e}");
        let set = parse_file(
            "seed = 7\nmagic_addresses = true\n[limits]\nclient_messages = \"10/m\"\n\
             [[rule]]\nstage = \"rcpt\"\ndomain = \"*.invalid\"\nprobability = 0.5\nreply = \"550\"\n\
             [[rule]]\nname = \"slow\"\nstage = \"any\"\ndelay = \"1s\"\n",
        )
        .unwrap();
        assert_eq!((set.seed, set.magic, set.rules.len()), (Some(7), true, 2));
        assert_eq!(set.rules[0].name, "rule-1");
        assert_eq!(set.rules[1].stage, None);
        assert!(set.limits.client[Kind::Messages as usize].is_some());
    }

    #[test]
    fn success_replies_must_fit_their_stage_and_names_be_unique() {
        for (stage, reply, ok) in [
            ("rcpt", "250 2.1.5 fine", true),
            ("rcpt", "251 2.1.5 will forward", true),
            ("rcpt", "354 go on", false),
            ("data", "354 go ahead", true),
            ("data", "250 2.0.0 fine", false),
            ("connect", "220 hi", true),
            ("quit", "221 bye", true),
            ("quit", "250 bye", false),
            ("any", "250 fine", false),
            ("any", "421 4.3.0 bye", true),
        ] {
            let text = format!("[[rule]]\nstage = \"{stage}\"\nreply = \"{reply}\"\n");
            assert_eq!(parse_file(&text).is_ok(), ok, "{stage} {reply}");
        }
        let e = parse_file(
            "[[rule]]\nname = \"rule-2\"\nstage = \"rcpt\"\nreply = \"550\"\n\
             [[rule]]\nstage = \"mail\"\nreply = \"550\"\n",
        )
        .unwrap_err();
        assert!(e.contains("another rule is named \"rule-2\""), "{e}");
    }

    #[test]
    fn short_forms() {
        let r = parse_short(Short::Reply, "rcpt:550:0.1").unwrap();
        assert_eq!((r.stage.as_str(), r.probability), ("rcpt", Some(0.1)));
        assert_eq!(r.reply.as_deref(), Some("550"));
        let r = parse_short(Short::Reply, "mail:451 4.7.1 Error: later").unwrap();
        assert_eq!(r.reply.as_deref(), Some("451 4.7.1 Error: later"));
        assert_eq!(r.probability, None);
        let r = parse_short(Short::Delay, "data:100ms..1s:0.5").unwrap();
        assert_eq!(
            (r.delay.as_deref(), r.probability),
            (Some("100ms..1s"), Some(0.5))
        );
        assert!(parse_short(Short::Close, "data").unwrap().close == Some(true));
        assert!(parse_short(Short::Reply, "rcpt").is_err());
        assert!(parse_short(Short::Reply, "rcp:550").is_err());
        let (k, c, r) = parse_rate_limit("client-conn=5/s").unwrap();
        assert_eq!((k, c, r.per_sec), (Kind::Connections, true, 5.0));
        assert!(parse_rate_limit("bogus=1/s").is_err());
    }
}
