//! Rate limits: token buckets for the whole server and per client address
//! (connections, messages, recipients per second), plus the greylist table.
//!
//! Owns: bucket arithmetic with the time passed in (no clock reads), and
//! the bounds on per-client state — a flood of client addresses cannot grow
//! these tables past [`MAX_CLIENTS`] / [`MAX_GREYLIST`] entries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most client addresses with their own buckets; past it, addresses whose
/// buckets are full again are forgotten (they would start full anyway).
pub const MAX_CLIENTS: usize = 65_536;
/// Most greylist triples remembered; past it, those older than
/// [`GREYLIST_KEEP`] go, and if that is not enough, all of them.
pub const MAX_GREYLIST: usize = 1 << 20;
/// A triple not retried within this long is forgotten (a new first try).
pub const GREYLIST_KEEP: Duration = Duration::from_secs(24 * 3600);

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Connections accepted (answered `421 4.7.0` and closed).
    Connections = 0,
    /// Transactions begun: MAIL (answered `451 4.7.1`).
    Messages = 1,
    /// RCPTs (answered `451 4.7.1`).
    Recipients = 2,
}

impl Kind {
    /// Every kind, in index order.
    pub const ALL: [Kind; 3] = [Kind::Connections, Kind::Messages, Kind::Recipients];

    /// As in metrics and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Connections => "connections",
            Kind::Messages => "messages",
            Kind::Recipients => "recipients",
        }
    }
}

/// A rate: N per second, minute or hour, as written; the bucket holds N,
/// so a whole period's worth may come at once (`3/h`: three, then one
/// every 20 minutes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h` (N may have decimals, more than 0).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("rate {s:?}: expected N/s, N/m or N/h"))?;
        let n: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("rate {s:?}: {n:?} is not a number"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            u => return Err(format!("rate {s:?}: unit {u:?} is not s, m or h")),
        };
        if !(n > 0.0 && n.is_finite()) {
            return Err(format!("rate {s:?}: must be more than 0"));
        }
        Ok(Self {
            per_sec: n / per,
            burst: n.max(1.0),
        })
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_sec).min(rate.burst);
        self.at = now;
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= rate.burst
    }
}

/// The configured limits: server-wide and per client, by [`Kind`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Whole server, indexed by `Kind as usize`.
    pub server: [Option<Rate>; 3],
    /// Each client address, indexed by `Kind as usize`.
    pub client: [Option<Rate>; 3],
}

impl Limits {
    /// No limit at all.
    pub fn is_empty(&self) -> bool {
        self.server.iter().chain(&self.client).all(Option::is_none)
    }
}

/// Which limit refused, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// What was counted.
    pub kind: Kind,
    /// Per client (else server-wide).
    pub per_client: bool,
}

/// The buckets behind [`Limits`].
#[derive(Debug, Default)]
pub struct Buckets {
    server: [Option<Bucket>; 3],
    clients: HashMap<IpAddr, [Option<Bucket>; 3]>,
}

impl Buckets {
    /// Takes a token of `kind` for `client` from its bucket and the
    /// server's; `Err` names the limit that has none (nothing is taken then
    /// from the server's bucket when the client's refused).
    pub fn take(
        &mut self,
        limits: &Limits,
        kind: Kind,
        client: IpAddr,
        now: Instant,
    ) -> Result<(), Refusal> {
        let i = kind as usize;
        if let Some(rate) = limits.client.get(i).copied().flatten() {
            if self.clients.len() >= MAX_CLIENTS && !self.clients.contains_key(&client) {
                self.forget_full(limits, now);
            }
            let slot = self.clients.entry(client).or_default();
            let b = slot
                .get_mut(i)
                .map(|b| b.get_or_insert_with(|| Bucket::full(rate, now)));
            if !b.is_some_and(|b| b.take(rate, now)) {
                return Err(Refusal {
                    kind,
                    per_client: true,
                });
            }
        }
        if let Some(rate) = limits.server.get(i).copied().flatten() {
            let b = self
                .server
                .get_mut(i)
                .map(|b| b.get_or_insert_with(|| Bucket::full(rate, now)));
            if !b.is_some_and(|b| b.take(rate, now)) {
                return Err(Refusal {
                    kind,
                    per_client: false,
                });
            }
        }
        Ok(())
    }

    /// Drops clients whose buckets are all full again; if none are, all.
    fn forget_full(&mut self, limits: &Limits, now: Instant) {
        self.clients.retain(|_, slot| {
            slot.iter().zip(&limits.client).any(|(b, r)| match (b, r) {
                (Some(b), Some(r)) => !b.is_full(*r, now),
                _ => false,
            })
        });
        // A sweep must free a quarter, or the next arrivals would each pay
        // for a whole scan; else start over (every bucket full again).
        if self.clients.len() > MAX_CLIENTS / 4 * 3 {
            self.clients.clear();
        }
    }

    /// Client addresses with buckets now.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

/// Greylisting (the first attempt of a client/sender/recipient triple is
/// deferred; a retry after the delay passes).
#[derive(Debug, Default)]
pub struct Greylist {
    first_seen: HashMap<u64, Instant>,
}

impl Greylist {
    /// Whether the triple `key` may pass now, `delay` after its first try.
    pub fn passes(&mut self, key: u64, delay: Duration, now: Instant) -> bool {
        if let Some(&first) = self.first_seen.get(&key) {
            let age = now.saturating_duration_since(first);
            if age < GREYLIST_KEEP {
                return age >= delay;
            }
        }
        if self.first_seen.len() >= MAX_GREYLIST {
            self.first_seen
                .retain(|_, t| now.saturating_duration_since(*t) < GREYLIST_KEEP);
            // As for the buckets: free a quarter, or start over (every
            // triple then greylisted once more).
            if self.first_seen.len() > MAX_GREYLIST / 4 * 3 {
                self.first_seen.clear();
            }
        }
        self.first_seen.insert(key, now);
        false
    }

    /// Triples remembered now.
    pub fn len(&self) -> usize {
        self.first_seen.len()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.first_seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_past_the_burst() {
        let r = Rate::parse("10/s").unwrap();
        assert_eq!((r.per_sec, r.burst), (10.0, 10.0));
        let m = Rate::parse("30/m").unwrap();
        assert_eq!((m.per_sec, m.burst), (0.5, 30.0));
        for bad in ["10", "0/s", "x/s", "10/d", "-1/s", "inf/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        let t0 = Instant::now();
        let mut b = Bucket::full(r, t0);
        let taken = (0..15).filter(|_| b.take(r, t0)).count();
        assert_eq!(taken, 10);
        // 0.25 s later: 2.5 tokens back, so two more.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!((0..5).filter(|_| b.take(r, t1)).count(), 2);
    }

    #[test]
    fn client_limits_are_per_address_and_bounded() {
        let limits = Limits {
            client: [Some(Rate::parse("2/s").unwrap()), None, None],
            ..Limits::default()
        };
        let mut b = Buckets::default();
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let c: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(b.take(&limits, Kind::Connections, a, now).is_ok());
        assert!(b.take(&limits, Kind::Connections, a, now).is_ok());
        let refused = b.take(&limits, Kind::Connections, a, now).unwrap_err();
        assert!(refused.per_client);
        assert!(b.take(&limits, Kind::Connections, c, now).is_ok());
        // Other kinds are not limited.
        assert!(b.take(&limits, Kind::Messages, a, now).is_ok());
        for i in 0..(u32::try_from(MAX_CLIENTS).unwrap() + 10) {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = b.take(&limits, Kind::Connections, ip, now);
        }
        assert!(b.clients() <= MAX_CLIENTS);
    }

    #[test]
    fn greylist_defers_the_first_try_and_passes_a_late_retry() {
        let mut g = Greylist::default();
        let t0 = Instant::now();
        let d = Duration::from_secs(60);
        assert!(!g.passes(7, d, t0));
        assert!(!g.passes(7, d, t0 + Duration::from_secs(59)));
        assert!(g.passes(7, d, t0 + Duration::from_secs(60)));
        assert!(!g.passes(8, d, t0 + Duration::from_secs(60)));
        assert_eq!(g.len(), 2);
    }
}
