//! Per-connection deadlines, and the clock.
//!
//! Owns: the only `Instant::now()` of the event loop ([`now`]), and at most
//! one armed time per connection key in an indexed binary min-heap: each
//! entry knows its position, so arming a key earlier re-keys it in place and
//! disarming removes it, both O(log n); nothing stale piles up under
//! connection churn.
//!
//! Arming keeps the *earliest* time: [`Timers::arm`] with a later time than
//! the armed one changes nothing. That is what makes the common case free:
//! a connection's idle deadline only ever moves later, so the loop leaves the
//! armed entry alone on every read; when it comes up, the connection looks at
//! its real deadlines, acts on what is due, and arms the next one. Only an
//! event that brings a deadline *sooner* (a partial command line, message
//! content, a held reply, a close) arms anything.

use std::time::Instant;

/// The current time: the one place the event loop reads the clock.
#[inline]
pub fn now() -> Instant {
    Instant::now()
}

const NOWHERE: usize = usize::MAX;

/// Armed times keyed by small integers (slab keys).
#[derive(Debug, Default)]
pub struct Timers {
    /// Keys, a min-heap by `at[key]`.
    heap: Vec<usize>,
    /// Per key: its armed time (meaningful while `pos[key] != NOWHERE`).
    at: Vec<Option<Instant>>,
    /// Per key: its index in `heap`, or `NOWHERE`.
    pos: Vec<usize>,
}

impl Timers {
    /// No deadlines.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `key` come up no later than `at`: a later time than the one
    /// armed changes nothing.
    pub fn arm(&mut self, key: usize, at: Instant) {
        if self.pos.len() <= key {
            self.pos.resize(key + 1, NOWHERE);
            self.at.resize(key + 1, None);
        }
        let Some(&p) = self.pos.get(key) else {
            return;
        };
        if p == NOWHERE {
            self.set_at(key, at);
            self.heap.push(key);
            self.set_pos(key, self.heap.len() - 1);
            self.sift_up(self.heap.len() - 1);
        } else if self.time(key).is_some_and(|armed| at < armed) {
            self.set_at(key, at);
            self.sift_up(p);
        }
    }

    /// Removes any armed time of `key`.
    pub fn disarm(&mut self, key: usize) {
        let Some(&p) = self.pos.get(key) else {
            return;
        };
        if p == NOWHERE {
            return;
        }
        let last = self.heap.len() - 1;
        self.swap(p, last);
        self.heap.pop();
        self.set_pos(key, NOWHERE);
        self.set_at(key, None);
        if p < self.heap.len() {
            self.sift_down(p);
            self.sift_up(p);
        }
    }

    /// The time armed for `key`, if any.
    pub fn armed(&self, key: usize) -> Option<Instant> {
        self.time(key)
    }

    /// When the loop should wake next.
    pub fn next(&self) -> Option<Instant> {
        self.heap.first().and_then(|&k| self.time(k))
    }

    /// Appends to `fired`, earliest first, every key armed at or before
    /// `now`, and disarms them.
    pub fn expired(&mut self, now: Instant, fired: &mut Vec<usize>) {
        while let Some(&key) = self.heap.first() {
            if self.time(key).is_none_or(|t| t > now) {
                break;
            }
            self.disarm(key);
            fired.push(key);
        }
    }

    /// How many keys are armed.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no key is armed.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn time(&self, key: usize) -> Option<Instant> {
        self.at.get(key).copied().flatten()
    }

    fn set_at(&mut self, key: usize, at: impl Into<Option<Instant>>) {
        if let Some(slot) = self.at.get_mut(key) {
            *slot = at.into();
        }
    }

    fn set_pos(&mut self, key: usize, p: usize) {
        if let Some(slot) = self.pos.get_mut(key) {
            *slot = p;
        }
    }

    fn time_at(&self, i: usize) -> Option<Instant> {
        self.heap.get(i).and_then(|&k| self.time(k))
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.heap.swap(i, j);
        for p in [i, j] {
            if let Some(&k) = self.heap.get(p) {
                self.set_pos(k, p);
            }
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.time_at(i) < self.time_at(parent) {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let mut least = i;
            for c in [2 * i + 1, 2 * i + 2] {
                if c < self.heap.len() && self.time_at(c) < self.time_at(least) {
                    least = c;
                }
            }
            if least == i {
                break;
            }
            self.swap(i, least);
            i = least;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn fire(t: &mut Timers, now: Instant) -> Vec<usize> {
        let mut v = Vec::new();
        t.expired(now, &mut v);
        v
    }

    #[test]
    fn fires_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::new();
        for (k, at) in [(3, 30), (1, 10), (7, 70), (2, 20), (5, 50)] {
            t.arm(k, ms(at));
        }
        assert_eq!(t.next(), Some(ms(10)));
        assert_eq!(fire(&mut t, ms(9)), Vec::<usize>::new());
        assert_eq!(fire(&mut t, ms(30)), [1, 2, 3]);
        assert_eq!(t.armed(1), None, "a fired key is disarmed");
        assert_eq!(fire(&mut t, ms(100)), [5, 7]);
        assert!(t.is_empty());
    }

    #[test]
    fn the_earliest_arming_wins_and_disarm_removes() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::new();
        t.arm(0, ms(10));
        t.arm(1, ms(20));
        t.disarm(0);
        assert_eq!(t.len(), 1);
        assert_eq!(fire(&mut t, ms(15)), Vec::<usize>::new(), "disarmed");
        // Later: no change. Earlier: re-keyed in place.
        t.arm(1, ms(40));
        assert_eq!(t.armed(1), Some(ms(20)));
        t.arm(1, ms(5));
        assert_eq!(t.next(), Some(ms(5)));
        assert_eq!(fire(&mut t, ms(5)), [1]);
        // Re-armed after firing; disarming one in the middle keeps the order.
        for (k, at) in [(1, 50), (0, 45), (2, 60), (3, 55)] {
            t.arm(k, ms(at));
        }
        t.disarm(3);
        t.disarm(9);
        assert_eq!(fire(&mut t, ms(100)), [0, 1, 2]);
    }

    #[test]
    fn churn_leaves_one_entry_per_key() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        for i in 0..10_000u64 {
            t.arm(4, t0 + Duration::from_secs(300 + i));
            t.arm(4, t0 + Duration::from_secs(30 + i));
            t.disarm(4);
            t.arm(4, t0 + Duration::from_secs(300 + i));
        }
        assert_eq!(t.len(), 1);
    }

    proptest! {
        /// Against a naive model: any sequence of arms, disarms and clock
        /// advances fires exactly the keys the model says, in time order.
        #[test]
        fn matches_a_naive_model(ops in prop::collection::vec((0usize..16, 0u64..200, 0u8..3), 1..300)) {
            let t0 = Instant::now();
            let mut t = Timers::new();
            let mut model: Vec<Option<u64>> = vec![None; 16];
            let mut clock = 0u64;
            for (key, v, op) in ops {
                match op {
                    0 => {
                        let at = clock + v;
                        t.arm(key, t0 + Duration::from_millis(at));
                        model[key] = Some(model[key].map_or(at, |m| m.min(at)));
                    }
                    1 => {
                        t.disarm(key);
                        model[key] = None;
                    }
                    _ => {
                        clock += v / 4;
                        let got = fire(&mut t, t0 + Duration::from_millis(clock));
                        let mut want: Vec<(u64, usize)> = model
                            .iter()
                            .enumerate()
                            .filter_map(|(k, d)| d.filter(|d| *d <= clock).map(|d| (d, k)))
                            .collect();
                        want.sort_unstable();
                        for &(_, k) in &want {
                            model[k] = None;
                        }
                        let times: Vec<u64> = got
                            .iter()
                            .map(|k| want.iter().find(|w| w.1 == *k).map(|w| w.0))
                            .collect::<Option<_>>()
                            .expect("fired only due keys");
                        prop_assert_eq!(got.len(), want.len());
                        prop_assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");
                    }
                }
                prop_assert_eq!(t.len(), model.iter().flatten().count());
                for (k, want) in model.iter().enumerate() {
                    prop_assert_eq!(t.armed(k), want.map(|d| t0 + Duration::from_millis(d)));
                }
            }
        }
    }
}
