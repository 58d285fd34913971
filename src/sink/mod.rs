//! Where accepted mail goes: the [`Sink`] trait and its implementations.
//!
//! The session tells the sink about one transaction at a time, per session
//! id: the envelope as it is accepted (borrowed, so a sink that does not keep
//! it never copies it), then the body as borrowed runs, then the end. The
//! sink's [`Verdict`] decides the final reply. A storing sink answers
//! [`Verdict::Pending`] to make the reply wait until the message is safe,
//! without blocking the loop; the reactor later hands the real verdict to
//! `Session::resolve`.

pub mod discard;
pub mod verify;

pub use discard::Discard;
pub use verify::Verify;

use crate::proto::reply::Reply;

/// Identifies one connection's session for the lifetime of the server.
pub type SessionId = u64;

/// The sink's answer at the end of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stored (or deliberately dropped): `250 2.0.0 Ok: queued`.
    Accepted,
    /// Send this reply instead (4xx or 5xx): the message is not kept.
    Rejected(Reply),
    /// The reply waits for `Session::resolve`.
    Pending,
}

/// Receives transactions. All calls for one id arrive in protocol order:
/// `mail`, `rcpt`*, `begin`, `body`*, then `end` or `abort`; `abort` may also
/// come at any point after `mail` (RSET, EHLO, QUIT, disconnect).
pub trait Sink {
    /// MAIL accepted; `reverse_path` is empty for the null path.
    fn mail(&mut self, _id: SessionId, _reverse_path: &[u8]) {}
    /// RCPT accepted.
    fn rcpt(&mut self, _id: SessionId, _forward_path: &[u8]) {}
    /// The message content starts (354 sent, or the first BDAT chunk).
    fn begin(&mut self, _id: SessionId) {}
    /// A run of body bytes, already unstuffed (DATA) or raw (BDAT).
    fn body(&mut self, id: SessionId, chunk: &[u8]);
    /// The whole body has arrived.
    fn end(&mut self, id: SessionId) -> Verdict;
    /// The transaction was abandoned; forget it.
    fn abort(&mut self, _id: SessionId) {}
    /// The session ended; nothing more will come for `id`.
    fn closed(&mut self, _id: SessionId) {}
    /// Lines for the final report (empty: nothing beyond the statistics).
    fn summary(&self) -> String {
        String::new()
    }
}
