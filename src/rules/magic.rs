//! Magic recipient addresses (`--magic-addresses`): the local part says
//! what happens, so a test provokes behaviour just by choosing the
//! recipient. Case-insensitive; a `+tag` or `-tag` after the keyword is
//! ignored (`reject550+a@x`). The table (also in the README):
//!
//! | local part          | at RCPT                        | at the end of the message   |
//! |---------------------|--------------------------------|-----------------------------|
//! | `reject`, `rejectNNN` | NNN (5xx, default 550)       |                             |
//! | `tempfail`, `tempfailNNN` | NNN (4xx, default 451)   |                             |
//! | `delayNs`, `delayNms` | 250 after the delay          |                             |
//! | `disconnect`        | close, no reply                |                             |
//! | `disconnect421`     | 421 then close                 |                             |
//! | `greylist`, `greylistNs` | 451 4.7.1 until retried after N s (default 60) | |
//! | `datarejectNNN`     | 250                            | NNN (5xx, default 554)      |
//! | `datatempfailNNN`   | 250                            | NNN (4xx, default 451)      |
//! | `datadelayNs`       | 250                            | 250 after the delay         |
//! | `datadisconnect`    | 250                            | close, no reply             |
//! | `drop`              | 250                            | 250, message kept nowhere   |

use std::time::Duration;

/// Longest delay a magic address may ask for: the default idle timeout.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// The digits of a delay (`2s` -> `2`, `150ms` -> `150`).
fn n_text(rest: &str) -> &str {
    rest.trim_end_matches(['m', 's'])
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Do {
    Proceed,
    /// A reply: code and text after the code.
    Reply(u16, String),
    Close,
    Drop,
}

/// A decision to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub delay: Option<Duration>,
    pub act: Do,
}

/// When it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Magic {
    Now(Effect),
    AtEnd(Effect),
    Greylist(Duration),
}

/// The code after a keyword: none (the default) or exactly three digits of
/// `class`. Exactly three: `reject0550` is not another spelling of 550
/// (each distinct text is kept for the life of the server).
fn code_in(rest: &str, class: u16, default: u16) -> Option<u16> {
    if rest.is_empty() {
        return Some(default);
    }
    if rest.len() != 3 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse::<u16>().ok().filter(|c| c / 100 == class)
}

fn delay(rest: &str) -> Option<Duration> {
    let (n, ms) = match rest.strip_suffix("ms") {
        Some(n) => (n, true),
        None => (rest.strip_suffix('s')?, false),
    };
    // A client chooses these: at most the default idle timeout, so a
    // delay cannot hold a connection slot longer than idling could.
    let n: u64 = n.parse().ok()?;
    let d = if ms {
        Duration::from_millis(n)
    } else {
        Duration::from_secs(n)
    };
    (d <= MAX_DELAY && n.to_string() == n_text(rest)).then_some(d)
}

fn now(delay: Option<Duration>, act: Do) -> Magic {
    Magic::Now(Effect { delay, act })
}

fn at_end(delay: Option<Duration>, act: Do) -> Magic {
    Magic::AtEnd(Effect { delay, act })
}

/// What the address `addr` asks for, if it is magic.
pub fn parse(addr: &[u8]) -> Option<Magic> {
    let addr = std::str::from_utf8(addr).ok()?;
    let local = addr.rsplit_once('@').map_or(addr, |(l, _)| l);
    let word = local
        .split(['+', '-'])
        .next()
        .unwrap_or(local)
        .to_ascii_lowercase();
    let w = word.as_str();
    // The text names the keyword and the code, never the client's spelling.
    let refuse = |kind: &str, code: u16| {
        Do::Reply(
            code,
            format!("{}.0.0 Refused by magic address {kind}{code}", code / 100),
        )
    };
    if let Some(r) = w.strip_prefix("datareject") {
        return Some(at_end(None, refuse("datareject", code_in(r, 5, 554)?)));
    }
    if let Some(r) = w.strip_prefix("datatempfail") {
        return Some(at_end(None, refuse("datatempfail", code_in(r, 4, 451)?)));
    }
    if let Some(r) = w.strip_prefix("datadelay") {
        return Some(at_end(Some(delay(r)?), Do::Proceed));
    }
    if w == "datadisconnect" {
        return Some(at_end(None, Do::Close));
    }
    if w == "drop" {
        return Some(at_end(None, Do::Drop));
    }
    if let Some(r) = w.strip_prefix("reject") {
        return Some(now(None, refuse("reject", code_in(r, 5, 550)?)));
    }
    if let Some(r) = w.strip_prefix("tempfail") {
        return Some(now(None, refuse("tempfail", code_in(r, 4, 451)?)));
    }
    if let Some(r) = w.strip_prefix("delay") {
        return Some(now(Some(delay(r)?), Do::Proceed));
    }
    if w == "disconnect" {
        return Some(now(None, Do::Close));
    }
    if w == "disconnect421" {
        return Some(now(
            None,
            Do::Reply(421, "4.0.0 Closing by magic address disconnect421".into()),
        ));
    }
    if let Some(r) = w.strip_prefix("greylist") {
        return Some(Magic::Greylist(if r.is_empty() {
            Duration::from_secs(60)
        } else {
            delay(r)?
        }));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(m: Option<Magic>) -> Option<(bool, u16)> {
        match m? {
            Magic::Now(Effect {
                act: Do::Reply(c, _),
                ..
            }) => Some((true, c)),
            Magic::AtEnd(Effect {
                act: Do::Reply(c, _),
                ..
            }) => Some((false, c)),
            _ => None,
        }
    }

    #[test]
    fn the_table() {
        let p = |s: &str| parse(s.as_bytes());
        assert_eq!(reply(p("reject550@x")), Some((true, 550)));
        assert_eq!(reply(p("Reject@x")), Some((true, 550)));
        assert_eq!(reply(p("reject553+tag@x")), Some((true, 553)));
        assert_eq!(p("reject450@x"), None, "a reject is 5xx");
        // One spelling per code: the texts a client can make are bounded.
        assert_eq!(p("reject0550@x"), None);
        assert_eq!(p("delay301s@x"), None, "at most the idle timeout");
        assert_eq!(reply(p("tempfail452@x")), Some((true, 452)));
        assert_eq!(reply(p("tempfail@x")), Some((true, 451)));
        assert_eq!(reply(p("disconnect421@x")), Some((true, 421)));
        assert_eq!(reply(p("datareject@x")), Some((false, 554)));
        assert_eq!(reply(p("datatempfail452@x")), Some((false, 452)));
        let d = |s, ms| Some(now(Some(Duration::from_millis(ms)), Do::Proceed)).eq(&p(s));
        assert!(d("delay2s@x", 2000) && d("delay150ms@x", 150));
        assert_eq!(p("disconnect@x"), Some(now(None, Do::Close)));
        assert_eq!(
            p("greylist@x"),
            Some(Magic::Greylist(Duration::from_secs(60)))
        );
        assert_eq!(
            p("greylist5s@x"),
            Some(Magic::Greylist(Duration::from_secs(5)))
        );
        assert_eq!(
            p("datadelay1s@x"),
            Some(at_end(Some(Duration::from_secs(1)), Do::Proceed))
        );
        assert_eq!(p("datadisconnect@x"), Some(at_end(None, Do::Close)));
        assert_eq!(p("drop@x"), Some(at_end(None, Do::Drop)));
        for plain in ["user@x", "rejected@x", "delay@x", "delays@x", "x@reject550"] {
            assert_eq!(p(plain), None, "{plain}");
        }
    }
}
