//! Per-connection deadlines, and the clock.
//!
//! Owns: the only `Instant::now()` of the event loop ([`now`]), and one
//! deadline per connection key in an indexed binary min-heap: each key has
//! at most one heap entry, which knows its position, so a deadline that moves
//! earlier is re-keyed in place (O(log n)) and a cancelled or reused key
//! leaves nothing stale behind to pile up under connection churn.
//!
//! Deadlines that move *later* — the idle clock moves on every read — cost
//! O(1): only the wanted time is stored; the entry keeps its earlier place,
//! and when it comes up it is re-keyed to the wanted time instead of firing.
//! So a busy connection costs one heap operation per timeout period, not one
//! per read. A key fires only once its wanted deadline has passed, never
//! early, and then has no deadline until it is given a new one.

use std::time::Instant;

/// The current time: the one place the event loop reads the clock.
#[inline]
pub fn now() -> Instant {
    Instant::now()
}

const NOWHERE: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The time this key's heap entry is ordered by (at or before `wanted`).
    at: Instant,
    /// When the key should fire; `None`: never.
    wanted: Option<Instant>,
    /// Index in `heap`, or `NOWHERE`.
    pos: usize,
}

/// Deadlines keyed by small integers (slab keys).
#[derive(Debug, Default)]
pub struct Timers {
    /// Keys, a min-heap by `slots[key].at`.
    heap: Vec<usize>,
    slots: Vec<Slot>,
}

impl Timers {
    /// No deadlines.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or with `None` clears) the deadline of `key`.
    pub fn set(&mut self, key: usize, deadline: Option<Instant>) {
        let Some(d) = deadline else {
            if let Some(s) = self.slots.get_mut(key) {
                // The entry stays until it comes up, then leaves quietly: at
                // most one per key, so nothing accumulates.
                s.wanted = None;
            }
            return;
        };
        if self.slots.len() <= key {
            let empty = Slot {
                at: d,
                wanted: None,
                pos: NOWHERE,
            };
            self.slots.resize(key + 1, empty);
        }
        let Some(s) = self.slots.get_mut(key) else {
            return;
        };
        s.wanted = Some(d);
        if s.pos == NOWHERE {
            s.at = d;
            s.pos = self.heap.len();
            self.heap.push(key);
            self.sift_up(self.heap.len() - 1);
        } else if d < s.at {
            s.at = d;
            let pos = s.pos;
            self.sift_up(pos);
        }
    }

    /// Clears the deadline of `key`.
    pub fn cancel(&mut self, key: usize) {
        self.set(key, None);
    }

    /// The deadline of `key`, if it has one.
    pub fn deadline(&self, key: usize) -> Option<Instant> {
        self.slots.get(key).and_then(|s| s.wanted)
    }

    /// When the loop should wake next (possibly a little early: an entry
    /// whose deadline moved later or was cleared comes up first).
    pub fn next(&self) -> Option<Instant> {
        self.heap
            .first()
            .and_then(|&k| self.slots.get(k))
            .map(|s| s.at)
    }

    /// Appends to `fired` every key whose deadline is at or before `now`,
    /// earliest first, and clears those deadlines.
    pub fn expired(&mut self, now: Instant, fired: &mut Vec<usize>) {
        while let Some(&key) = self.heap.first() {
            let Some(s) = self.slots.get_mut(key) else {
                break;
            };
            if s.at > now {
                break;
            }
            match s.wanted {
                Some(w) if w > s.at => {
                    // Moved later since it was placed: re-key, not fire (if
                    // `w` has passed too, it comes up again in its turn, so
                    // keys still fire in deadline order).
                    s.at = w;
                    self.sift_down(0);
                }
                wanted => {
                    s.wanted = None;
                    self.remove_top();
                    if wanted.is_some() {
                        fired.push(key);
                    }
                }
            }
        }
    }

    /// How many keys have a heap entry (for tests and bounds).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no key has a heap entry.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn at(&self, i: usize) -> Option<Instant> {
        self.heap
            .get(i)
            .and_then(|&k| self.slots.get(k))
            .map(|s| s.at)
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.heap.swap(i, j);
        for p in [i, j] {
            if let Some(&k) = self.heap.get(p) {
                if let Some(s) = self.slots.get_mut(k) {
                    s.pos = p;
                }
            }
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.at(i) < self.at(parent) {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            for c in [l, r] {
                if c < self.heap.len() && self.at(c) < self.at(least) {
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

    fn remove_top(&mut self) {
        let last = self.heap.len() - 1;
        self.swap(0, last);
        if let Some(k) = self.heap.pop() {
            if let Some(s) = self.slots.get_mut(k) {
                s.pos = NOWHERE;
            }
        }
        self.sift_down(0);
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
            t.set(k, Some(ms(at)));
        }
        assert_eq!(t.next(), Some(ms(10)));
        assert_eq!(fire(&mut t, ms(9)), Vec::<usize>::new());
        assert_eq!(fire(&mut t, ms(30)), [1, 2, 3]);
        assert_eq!(t.deadline(1), None, "a fired key has no deadline");
        assert_eq!(fire(&mut t, ms(100)), [5, 7]);
        assert!(t.is_empty());
    }

    #[test]
    fn cancel_and_rearm() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::new();
        t.set(0, Some(ms(10)));
        t.set(1, Some(ms(20)));
        t.cancel(0);
        assert_eq!(fire(&mut t, ms(15)), Vec::<usize>::new(), "cancelled");
        assert_eq!(t.len(), 1, "the cancelled entry left when it came up");
        // Later: stored only; the entry comes up at 20 and is re-keyed.
        t.set(1, Some(ms(40)));
        assert_eq!(fire(&mut t, ms(25)), Vec::<usize>::new());
        assert_eq!(t.next(), Some(ms(40)));
        // Earlier: re-keyed in place.
        t.set(1, Some(ms(30)));
        assert_eq!(t.next(), Some(ms(30)));
        assert_eq!(fire(&mut t, ms(30)), [1]);
        // Re-armed after firing, and a key reused with a later deadline.
        t.set(1, Some(ms(50)));
        t.set(0, Some(ms(45)));
        assert_eq!(fire(&mut t, ms(60)), [0, 1]);
    }

    #[test]
    fn churn_leaves_one_entry_per_key() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        // A connection slot reused 10 000 times, each time moving its
        // deadline earlier and later again: still one entry.
        for i in 0..10_000u64 {
            t.set(4, Some(t0 + Duration::from_secs(300 + i)));
            t.set(4, Some(t0 + Duration::from_secs(30 + i)));
            t.set(4, Some(t0 + Duration::from_secs(300 + i)));
            t.cancel(4);
        }
        assert_eq!(t.len(), 1);
    }

    proptest! {
        /// Against a naive model: any sequence of sets, clears and clock
        /// advances fires exactly the keys the model says, in time order.
        #[test]
        fn matches_a_naive_model(ops in prop::collection::vec((0usize..16, 0u64..200, any::<bool>()), 1..300)) {
            let t0 = Instant::now();
            let mut t = Timers::new();
            let mut model: Vec<Option<u64>> = vec![None; 16];
            let mut clock = 0u64;
            for (key, v, is_set) in ops {
                if is_set {
                    let at = clock + v;
                    t.set(key, Some(t0 + Duration::from_millis(at)));
                    model[key] = Some(at);
                } else if v % 3 == 0 {
                    t.cancel(key);
                    model[key] = None;
                } else {
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
                    let mut got_sorted = got.clone();
                    got_sorted.sort_unstable();
                    let mut want_keys: Vec<usize> = want.iter().map(|w| w.1).collect();
                    want_keys.sort_unstable();
                    prop_assert_eq!(got_sorted, want_keys);
                    // Fired in deadline order.
                    let times: Vec<u64> = got.iter().map(|k| want.iter().find(|w| w.1 == *k).unwrap().0).collect();
                    prop_assert!(times.windows(2).all(|w| w[0] <= w[1]));
                }
                prop_assert!(t.len() <= 16);
                for (k, want) in model.iter().enumerate() {
                    prop_assert_eq!(t.deadline(k), want.map(|d| t0 + Duration::from_millis(d)));
                }
            }
        }
    }
}
