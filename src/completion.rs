//! Deferred verdicts coming back to the event loop from other threads.
//!
//! A sink that answers `Verdict::Pending` (a storage thread that must fsync
//! first, say) later calls [`Completer::complete`] from any thread. The
//! verdict goes into a queue shared with the loop, and the loop's
//! `mio::Waker` wakes it; the loop takes the whole queue in one lock
//! ([`Completions::take`]), hands each verdict to its session and serves the
//! connection again at once, since input it had already read is waiting.
//! A verdict for a connection that is gone is dropped.
//!
//! The queue is generic: with `--threads N` the same mechanism carries the
//! reporting side's requests (snapshots, `PUT /rules`) to each loop.

use crate::proto::server::{SessionId, Verdict};
use mio::Waker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The verdicts, and a flag the loop reads without taking the lock: most
/// turns of a busy loop have none.
struct Shared<T> {
    verdicts: Mutex<Vec<T>>,
    any: AtomicBool,
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self {
            verdicts: Mutex::new(Vec::new()),
            any: AtomicBool::new(false),
        }
    }
}

type Queue<T> = Arc<Shared<T>>;

/// What the sinks send: a session's verdict.
type Done = (SessionId, Verdict);

/// Sends verdicts to one event loop; cheap to clone, usable from any thread.
pub struct Completer<T = Done> {
    queue: Queue<T>,
    waker: Arc<Waker>,
}

impl<T> Clone for Completer<T> {
    fn clone(&self) -> Self {
        Self {
            queue: Arc::clone(&self.queue),
            waker: Arc::clone(&self.waker),
        }
    }
}

impl<T> std::fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completer")
    }
}

impl<T> Completer<T> {
    /// Wakes the loop without a verdict: a sink that was under pressure can
    /// take input again.
    pub fn wake(&self) {
        // A failed wake means the loop is gone; nothing is left to tell.
        let _ = self.waker.wake();
    }

    /// Queues `item` for the loop and wakes it.
    pub fn send(&self, item: T) {
        self.queue
            .verdicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item);
        self.queue.any.store(true, Ordering::Release);
        // A failed wake means the loop is gone; nothing is left to tell.
        let _ = self.waker.wake();
    }
}

impl Completer {
    /// Delivers the verdict for the message `id` ended with.
    pub fn complete(&self, id: SessionId, verdict: Verdict) {
        self.send((id, verdict));
    }
}

/// The loop's end of the queue.
pub struct Completions<T = Done> {
    queue: Queue<T>,
    waker: Arc<Waker>,
    /// Swapped with the shared queue, so the lock is held for a swap only.
    taken: Vec<T>,
}

impl<T> Completions<T> {
    /// A queue that wakes the loop through `waker`.
    pub fn new(waker: Arc<Waker>) -> Self {
        Self {
            queue: Arc::default(),
            waker,
            taken: Vec::new(),
        }
    }

    /// A sender for sinks and their threads.
    pub fn completer(&self) -> Completer<T> {
        Completer {
            queue: Arc::clone(&self.queue),
            waker: Arc::clone(&self.waker),
        }
    }

    /// True when verdicts are waiting (one atomic load, no lock).
    #[inline]
    pub fn pending(&self) -> bool {
        self.queue.any.load(Ordering::Relaxed)
    }

    /// Every verdict delivered since the last call, in arrival order.
    pub fn take(&mut self) -> std::vec::Drain<'_, T> {
        self.taken.clear();
        if self.queue.any.swap(false, Ordering::Acquire) {
            let mut q = self
                .queue
                .verdicts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut *q, &mut self.taken);
        }
        self.taken.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    #[test]
    fn verdicts_from_threads_wake_the_loop_in_order() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(7)).unwrap());
        let mut c = Completions::new(waker);
        assert_eq!(c.take().count(), 0);
        let sender = c.completer();
        let t = std::thread::spawn(move || {
            sender.complete(1, Verdict::Accepted);
            sender.complete(
                2,
                Verdict::Rejected(crate::proto::reply::ReplyId::LocalError),
            );
        });
        t.join().unwrap();
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(10)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == Token(7)));
        let got: Vec<_> = c.take().collect();
        assert_eq!(
            got,
            [
                (1, Verdict::Accepted),
                (
                    2,
                    Verdict::Rejected(crate::proto::reply::ReplyId::LocalError)
                )
            ]
        );
        assert_eq!(c.take().count(), 0);
    }
}
