//! The I/O layer shared by the server's reactor and smtpload's driver.
//!
//! Owns: the byte stream under a connection ([`Transport`]: plain TCP, or
//! TLS over it, with the configurations in [`tls`]) and the per-connection buffers and loops
//! around it ([`Link`]): carried-over input offered again before the next
//! read into a shared scratch buffer, pending output written with a partial
//! write offset, readiness interest toggled only when it changes, and the
//! drain-before-close dance. Knows nothing about SMTP: the protocol is a
//! closure that says how much input it used.

use std::io;

mod link;
pub mod tls;
mod transport;

pub use link::{Consumed, Drain, Flush, Keep, Link, ReadEnd};
pub use transport::{Offer, Stream, Tls, TlsConn, TlsFailure, TlsInfo, Transport};

/// Syscalls and bytes, counted where they happen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounts {
    /// `read` calls that returned data.
    pub reads: u64,
    /// `write` calls.
    pub writes: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

impl std::ops::AddAssign for IoCounts {
    fn add_assign(&mut self, o: Self) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
    }
}

/// An I/O error in the words a person expects on one line
/// (`address already in use`, `no such file or directory`), without the
/// `(os error N)` tail.
pub fn plain_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address already in use".into(),
        io::ErrorKind::AddrNotAvailable => "address not available on this host".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::StorageFull => "no space left on device".into(),
        io::ErrorKind::ReadOnlyFilesystem => "read-only file system".into(),
        io::ErrorKind::NotADirectory => "not a directory".into(),
        _ => e.to_string(),
    }
}
