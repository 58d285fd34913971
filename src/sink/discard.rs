//! The discard sink: counts and forgets. Copies nothing.

use super::{SessionId, Sink, Verdict};

/// Counts what it was given; keeps none of it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Discard {
    /// Messages that reached `end`.
    pub messages: u64,
    /// Recipients accepted (also of transactions later aborted).
    pub recipients: u64,
    /// Body bytes after unstuffing.
    pub bytes: u64,
}

impl Sink for Discard {
    fn rcpt(&mut self, _id: SessionId, _forward_path: &[u8]) {
        self.recipients += 1;
    }

    fn body(&mut self, _id: SessionId, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
    }

    fn end(&mut self, _id: SessionId) -> Verdict {
        self.messages += 1;
        Verdict::Accepted
    }
}
