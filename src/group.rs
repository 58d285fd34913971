//! Several event loops (`--threads N`), shared-nothing.
//!
//! Each loop is a whole [`Server`] on its own thread: its own listening
//! sockets (`SO_REUSEPORT` on the same addresses, so the kernel spreads
//! connections over them), slab, timers, buffers, sink, statistics and
//! rules engine. Nothing is shared on the mail path. The reporting side (the
//! main thread) reaches a loop only through its [`Ask`] queue, the same
//! queue-and-waker mechanism sinks use for deferred verdicts: it asks every
//! loop for a copy of its figures and adds them up (counters, hdrhistogram
//! `add`, the verify sink's sequence sets), and sends `PUT /rules` and
//! `POST /reset` to every loop. A loop answers between two turns, so an
//! answer costs the mail path one atomic load per turn while none is asked.

use crate::completion::Completer;
use crate::control::Target;
use crate::metrics::Exposition;
use crate::proto::server::{Settings, Sink};
use crate::reactor::{Ask, Background, Controlled, Report, Server, ShutdownHandle};
use crate::rules::Engine;
use crate::sink::{Merge, Summary};
use crate::stats::Stats;
use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the reporting side waits for the loops' answers at most (a
/// loop answers between two turns: at once, unless it is stuck).
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// While waiting, how often to look for loops that ended meanwhile.
const LOOK_AGAIN: Duration = Duration::from_millis(20);

/// Figures merged from every loop.
pub struct Snapshot<S> {
    /// Counters and histograms, added up.
    pub stats: Stats,
    /// The sinks' figures, merged.
    pub sink: S,
    /// The rules' counts, added up (the set of loop 0).
    pub rules: Option<Engine>,
    /// The longest-running loop's uptime.
    pub uptime: Duration,
    /// Connections each loop accepted, in loop order.
    pub connections: Vec<u64>,
}

/// Loops running on their threads.
pub struct Group<S: Sink> {
    loops: Vec<Background<S>>,
    askers: Vec<Completer<Ask<S>>>,
}

/// One loop's figures: statistics, a sink copy, a rules copy, uptime.
type Part<S> = (Stats, S, Option<Engine>, Duration);

impl<S: Sink + Merge + Send + 'static> Group<S> {
    /// Starts every server on a thread of its own.
    pub fn spawn(servers: Vec<Server<S>>) -> Self {
        let askers = servers.iter().map(Server::asker).collect();
        Self {
            loops: servers.into_iter().map(Server::spawn).collect(),
            askers,
        }
    }

    /// Handles that stop every loop (signals).
    pub fn handles(&self) -> Vec<ShutdownHandle> {
        self.loops.iter().map(|l| l.handle.clone()).collect()
    }

    /// Runs `f` on every loop between its turns; the answers of the loops
    /// still running, with their index.
    pub fn ask_all<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Controlled<'_, S>) -> T + Clone + Send + 'static,
    ) -> Vec<(usize, T)> {
        let (tx, rx) = mpsc::channel();
        let mut waiting = vec![false; self.askers.len()];
        for (i, (asker, l)) in self.askers.iter().zip(&self.loops).enumerate() {
            if l.is_finished() {
                continue;
            }
            let (tx, f) = (tx.clone(), f.clone());
            asker.send(Box::new(move |view| {
                let _ = tx.send((i, f(view)));
            }));
            waiting[i] = true;
        }
        let until = Instant::now() + ANSWER_WAIT;
        let mut got: Vec<(usize, T)> = Vec::with_capacity(self.askers.len());
        while waiting.contains(&true) && Instant::now() < until {
            match rx.recv_timeout(LOOK_AGAIN) {
                Ok((i, answer)) => {
                    waiting[i] = false;
                    got.push((i, answer));
                }
                // A loop that ended meanwhile never answers: its ask stays
                // in a queue nobody reads.
                Err(_) => {
                    for (w, l) in waiting.iter_mut().zip(&self.loops) {
                        *w &= !l.is_finished();
                    }
                }
            }
        }
        got.sort_by_key(|(i, _)| *i);
        got
    }

    /// Every loop's figures, added up; `None` once none answers (stopped).
    pub fn snapshot(&self) -> Option<Snapshot<S>> {
        let parts = self.ask_all(|v| -> Part<S> {
            (
                v.statistics().clone(),
                v.sink().snapshot(),
                v.rules().and_then(Engine::snapshot),
                v.uptime(),
            )
        });
        let mut connections = vec![0; self.askers.len()];
        for (i, p) in &parts {
            if let Some(c) = connections.get_mut(*i) {
                *c = p.0.counters.connections;
            }
        }
        let (stats, sink, rules, uptime) = merge(parts.into_iter().map(|(_, p)| p));
        Some(Snapshot {
            stats,
            sink: sink?,
            rules,
            uptime,
            connections,
        })
    }

    /// Asks every loop that is not stopping yet to stop gracefully (a
    /// signal may have asked some already: they keep their grace period).
    pub fn stop(&self) {
        for l in &self.loops {
            l.handle.request_graceful();
        }
    }

    /// Whether some loop has ended (stopped, or failed).
    pub fn any_finished(&self) -> bool {
        self.loops.iter().any(Background::is_finished)
    }

    /// Waits for every loop; their reports merged, and the connections each
    /// accepted. The first loop's error, if one failed.
    pub fn join(self) -> io::Result<(Report<S>, Vec<u64>)> {
        let reports: Vec<io::Result<Report<S>>> =
            self.loops.into_iter().map(Background::join).collect();
        let mut parts = Vec::with_capacity(reports.len());
        let mut connections = Vec::with_capacity(reports.len());
        let mut elapsed = Duration::ZERO;
        for r in reports {
            let r = r?;
            connections.push(r.stats.counters.connections);
            elapsed = elapsed.max(r.elapsed);
            parts.push((r.stats, r.sink, r.rules, r.elapsed));
        }
        let (stats, sink, rules, _) = merge(parts.into_iter());
        let sink = sink.ok_or_else(|| io::Error::other("no event loop ran"))?;
        Ok((
            Report {
                stats,
                sink,
                elapsed,
                rules,
            },
            connections,
        ))
    }
}

fn merge<S: Merge>(
    parts: impl Iterator<Item = Part<S>>,
) -> (Stats, Option<S>, Option<Engine>, Duration) {
    let mut stats = Stats::new();
    let mut sink: Option<S> = None;
    let mut rules: Option<Engine> = None;
    let mut uptime = Duration::ZERO;
    for (st, sk, ru, up) in parts {
        stats.merge(&st);
        match sink.as_mut() {
            Some(s) => s.merge(sk),
            None => sink = Some(sk),
        }
        match (rules.as_mut(), ru) {
            (Some(r), Some(other)) => r.merge_counts(&other),
            (None, other) => rules = other,
            (Some(_), None) => {}
        }
        uptime = uptime.max(up);
    }
    (stats, sink, rules, uptime)
}

/// The control endpoint of a group: figures merged from every loop,
/// `PUT /rules` and `POST /reset` sent to every loop.
pub struct GroupControl<'a, S: Sink> {
    /// The loops.
    pub group: &'a Group<S>,
    /// The settings every loop runs with.
    pub settings: &'a Settings,
}

impl<S: Sink + Merge + Summary + Send + 'static> GroupControl<'_, S> {
    /// `f` on a view of the merged figures; `T::default()` once every loop
    /// has stopped.
    fn with_merged<T: Default>(&self, f: impl FnOnce(&mut Controlled<'_, S>, &[u64]) -> T) -> T {
        let Some(mut snap) = self.group.snapshot() else {
            return T::default();
        };
        let mut tally = snap.stats.replies_by_id;
        let mut view = Controlled::merged(
            &mut tally,
            &mut snap.stats,
            &mut snap.rules,
            self.settings,
            &snap.sink,
            snap.uptime,
        );
        f(&mut view, &snap.connections)
    }
}

impl<S: Sink + Merge + Summary + Send + 'static> Target for GroupControl<'_, S> {
    fn metrics(&mut self) -> String {
        self.with_merged(|view, connections| {
            let mut x = Exposition::new();
            let per_loop: Vec<(String, u64)> = connections
                .iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), *n))
                .collect();
            x.counters(
                "smtpsink_loop_connections_total",
                "Connections accepted, by event loop (--threads).",
                "loop",
                &per_loop,
            );
            view.metrics() + &x.finish()
        })
    }

    fn stats(&mut self) -> serde_json::Value {
        self.with_merged(|view, connections| {
            let mut j = view.stats();
            j["loops"] = connections
                .iter()
                .map(|n| serde_json::json!({ "connections": n }))
                .collect();
            j
        })
    }

    fn put_rules(&mut self, text: &str) -> Result<String, String> {
        let text = text.to_string();
        let mut answers = self
            .group
            .ask_all(move |v| v.put_rules(&text))
            .into_iter()
            .map(|(_, a)| a);
        // Every loop parses the same text, so they agree; loop 0 speaks for
        // all, unless one refused what the others took (its reply texts at
        // their cap).
        let first = answers
            .next()
            .unwrap_or_else(|| Err("the event loops are stopping".into()));
        answers.find(Result::is_err).unwrap_or(first)
    }

    fn reset(&mut self) {
        self.group.ask_all(|v| v.reset());
    }
}
