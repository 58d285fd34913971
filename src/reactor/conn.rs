//! One client connection: the socket, its carried-over input, its unsent
//! output, its session and its idle deadline.
//!
//! Input is read into the reactor's shared scratch buffer; only bytes the
//! session could not consume yet (a partial line, a held-back CR) are kept
//! here, so an idle connection holds a few hundred bytes at most. Output is
//! appended here by the session and written once per batch.

use crate::proto::server::Session;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::time::Instant;

/// Output above this, not yet accepted by the kernel, pauses reading from the
/// client until it drains: a client that never reads cannot grow us.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;

pub struct Conn {
    pub sock: TcpStream,
    pub session: Session,
    /// Unconsumed input, to be placed before the next read.
    pub carry: Vec<u8>,
    /// Replies not yet written; `out_pos` bytes of it already were.
    pub out: Vec<u8>,
    pub out_pos: usize,
    pub last_active: Instant,
    /// WRITABLE interest is registered (only while output is pending).
    pub want_write: bool,
    /// Listed in the reactor's flush queue for this turn.
    pub flush_queued: bool,
    /// Reading stopped because too much output was pending.
    pub read_paused: bool,
    /// Closing: our FIN is sent and we read until the peer's, at most until
    /// then (see [`Conn::discard_input`]).
    pub lingering_until: Option<Instant>,
}

/// What a drain of unread input found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// The peer closed (or the socket failed): nothing more will come.
    Eof,
    /// Nothing unread right now.
    Empty,
    /// Still more after the budget.
    More,
}

/// Result of trying to write pending output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    Done,
    Blocked,
    Failed,
}

impl Conn {
    pub fn new(sock: TcpStream, session: Session, now: Instant) -> Self {
        Self {
            sock,
            session,
            carry: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            last_active: now,
            want_write: false,
            flush_queued: false,
            read_paused: false,
            lingering_until: None,
        }
    }

    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Writes pending output until done or the socket is full. A client
    /// that is reading its replies is active, even if it sends nothing.
    pub fn flush(&mut self, write_calls: &mut u64, bytes_out: &mut u64, now: Instant) -> Flush {
        while self.has_output() {
            *write_calls += 1;
            match self
                .sock
                .write(self.out.get(self.out_pos..).unwrap_or_default())
            {
                Ok(0) => return Flush::Failed,
                Ok(n) => {
                    self.out_pos += n;
                    *bytes_out += n as u64;
                    self.last_active = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Flush::Failed,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        // A burst (a huge pipelined batch) may have grown the buffer; do not
        // keep that memory on an idle connection.
        if self.out.capacity() > OUTPUT_HIGH_WATER {
            self.out = Vec::new();
        }
        Flush::Done
    }

    /// Reads into `buf`, retrying on EINTR.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.sock.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    /// Reads and drops unread input, at most 256 KiB. Closing a socket with
    /// unread input makes the kernel send RST, which can destroy replies the
    /// peer has not read yet; so a close first drains, and lingers when more
    /// keeps coming.
    pub fn discard_input(&mut self, scratch: &mut [u8]) -> Drain {
        for _ in 0..4 {
            match self.sock.read(scratch) {
                Ok(0) => return Drain::Eof,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drain::Empty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Drain::Eof,
            }
        }
        Drain::More
    }

    /// Sends FIN after whatever output is queued.
    pub fn shutdown_write(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}
