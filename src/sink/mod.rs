//! Where accepted mail goes: implementations of the session's
//! [`Sink`] trait.
//!
//! The trait itself belongs to the protocol layer (`proto::server`), so the
//! session depends on nothing above it; it is re-exported here. The session
//! tells the sink about one transaction at a time, per session id: the
//! envelope as it is accepted (borrowed, so a sink that does not keep it never
//! copies it), then the body as borrowed runs, then the end. The sink's
//! [`Verdict`] decides the final reply. A storing sink answers
//! [`Verdict::Pending`] to make the reply wait until the message is safe,
//! without blocking the loop, and later hands the real verdict to the
//! server's `completion::Completer` (from any thread).

pub mod discard;
pub mod maildir;
pub mod verify;

pub use crate::proto::server::{SessionId, Sink, Verdict};
pub use discard::Discard;
pub use maildir::Maildir;
pub use verify::Verify;

/// What a sink adds to the final report.
pub trait Summary {
    /// Lines for the final report (empty: nothing beyond the statistics).
    fn summary(&self) -> String {
        String::new()
    }
    /// Its part of `--json`: the key and the value (`None`: nothing).
    fn json(&self) -> Option<(&'static str, serde_json::Value)> {
        None
    }
    /// Its metrics for the control endpoint's `/metrics`.
    fn metrics(&self, _x: &mut crate::metrics::Exposition) {}
}

impl Summary for Discard {}

/// A sink whose figures add up across event loops (`--threads`): each loop
/// has its own, and the reporting side merges copies of them.
pub trait Merge: Sized {
    /// A copy of the figures reports show (not transactions in progress).
    #[must_use]
    fn snapshot(&self) -> Self;
    /// Adds another loop's figures to these.
    fn merge(&mut self, other: Self);
    /// Takes what the reporting side decided on an earlier merged copy
    /// (the expected run and whether its missing messages are lost).
    fn adopt(&mut self, _earlier: &Self) {}
}

impl Merge for Discard {
    fn snapshot(&self) -> Self {
        *self
    }

    fn merge(&mut self, other: Self) {
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.bytes += other.bytes;
    }
}
