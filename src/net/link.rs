//! One connection's byte plumbing: transport, carried-over input, pending
//! output, registered interest.
//!
//! Input is read into the caller's scratch buffer (one per event loop, shared
//! by every connection) after the bytes carried over from the last read;
//! the consumer says how much it used and the rest is carried again. The
//! carry is a suffix of one scratch-full of input, so it is never larger
//! than the scratch buffer.
//!
//! Output is either queued here ([`Link::out_mut`], then [`Link::flush`]) or
//! handed over from a buffer the caller shares between connections
//! ([`Link::send`]): what the socket takes goes straight from there, and only
//! the rest is copied here. So a connection whose peer keeps up never holds
//! an output allocation of its own.
//!
//! Buffers that grew past their [`Keep`] limit are released as soon as they
//! are empty: an idle connection goes back to its small footprint.

use super::transport::Offer;
use super::{IoCounts, TlsConn, Transport};
use mio::{Interest, Registry, Token};
use std::io;

/// Result of writing pending output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything was written.
    Done,
    /// The socket is full; some output is still pending.
    Blocked,
    /// The connection failed.
    Failed,
}

/// How a pass of [`Link::read_with`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The socket has nothing more right now.
    Drained,
    /// The byte budget is spent; more may be waiting.
    Budget,
    /// The consumer stopped taking input: what it left is carried.
    Stopped,
    /// The peer closed its side, or the connection failed.
    Closed,
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

/// What a consumer did with the input it was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumed {
    /// Bytes used from the start of the input; the rest is carried.
    pub used: usize,
    /// Stop reading: the consumer takes no more input for now.
    pub stop: bool,
}

/// Capacities above which an empty buffer is released rather than kept for
/// the next use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// For carried-over input.
    pub carry: usize,
    /// For pending output.
    pub out: usize,
}

/// A connection's transport and buffers.
#[derive(Debug)]
pub struct Link {
    transport: Transport,
    carry: Vec<u8>,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_pos: usize,
    /// The interest registered with the poller.
    interest: Interest,
    keep: Keep,
}

impl Link {
    /// A link over `transport`, not yet registered.
    pub fn new(transport: Transport, keep: Keep) -> Self {
        Self {
            transport,
            carry: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            interest: Interest::READABLE,
            keep,
        }
    }

    /// The stream underneath (peer address, connect errors).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Registers the transport for `interest`.
    pub fn register(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        r.register(&mut self.transport, token, interest)?;
        self.interest = interest;
        Ok(())
    }

    /// Stops all events for this link (before it is dropped).
    pub fn deregister(&mut self, r: &Registry) {
        let _ = r.deregister(&mut self.transport);
    }

    /// Asks for WRITABLE events (while output is pending) or stops asking;
    /// the poller is only told when this changes.
    pub fn want_write(&mut self, r: &Registry, token: Token, on: bool) {
        let want = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if want != self.interest && r.reregister(&mut self.transport, token, want).is_ok() {
            self.interest = want;
        }
    }

    /// Bytes carried over from the last read, waiting to be consumed.
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    /// Heap bytes this link holds in its buffers.
    pub fn footprint(&self) -> usize {
        self.carry.capacity() + self.out.capacity()
    }

    /// Reads what the transport has, at most about `budget` bytes, and
    /// offers each read, after the carried bytes, to `consume`, which may
    /// also queue output. On Linux a read that does not fill the buffer is
    /// taken as "drained" (edge-triggered epoll reports every later arrival),
    /// which saves the read that would only say `WouldBlock`; not with `drain`
    /// (the event also said the peer closed, which no later event repeats).
    // Measured (callgrind, pipelined 1 KiB): out of line, with the session
    // call inlined into it, this costs ~100 instructions per message more.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn read_with(
        &mut self,
        scratch: &mut [u8],
        budget: usize,
        drain: bool,
        io: &mut IoCounts,
        mut consume: impl FnMut(&[u8], &mut Vec<u8>) -> Consumed,
    ) -> ReadEnd {
        if self.transport.is_tls() {
            return self.read_tls(scratch, budget, drain, io, consume);
        }
        let mut budget = budget;
        loop {
            if budget == 0 {
                return ReadEnd::Budget;
            }
            let carried = self.carry.len();
            let Some(space) = scratch.get_mut(carried..).filter(|s| !s.is_empty()) else {
                // The consumer left a whole buffer unconsumed: it is not
                // taking input, whatever it said.
                return ReadEnd::Stopped;
            };
            let n = match self.transport.read(space) {
                Ok(0) => return ReadEnd::Closed,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Drained,
                Err(_) => return ReadEnd::Closed,
            };
            let filled = n == space.len();
            io.reads += 1;
            io.bytes_in += n as u64;
            budget = budget.saturating_sub(n);
            if let Some(head) = scratch.get_mut(..carried) {
                head.copy_from_slice(&self.carry);
            }
            let input = scratch.get(..carried + n).unwrap_or_default();
            let c = consume(input, &mut self.out);
            self.keep_carry(input.get(c.used..).unwrap_or_default());
            if c.stop {
                return ReadEnd::Stopped;
            }
            if !filled && !drain && cfg!(target_os = "linux") {
                return ReadEnd::Drained;
            }
        }
    }

    /// [`Link::read_with`] through TLS: each record's plaintext is offered
    /// where rustls holds it (see [`Parts::offer`]). Out of line, taking
    /// the consumer by value: the plaintext path's code (which inlines the
    /// session into the read loop and keeps the consumer in registers)
    /// stays as it was (measured with callgrind: by reference, ~50
    /// instructions a message more on the plaintext path).
    #[inline(never)]
    fn read_tls(
        &mut self,
        scratch: &mut [u8],
        budget: usize,
        drain: bool,
        io: &mut IoCounts,
        mut consume: impl FnMut(&[u8], &mut Vec<u8>) -> Consumed,
    ) -> ReadEnd {
        let Transport::Tls(tls) = &mut self.transport else {
            return ReadEnd::Closed;
        };
        let mut parts = Parts {
            carry: &mut self.carry,
            out: &mut self.out,
            keep: self.keep,
            scratch,
            io,
        };
        match tls.read_plain(budget, drain, &mut |p| parts.offer(p, &mut consume)) {
            Ok(end) => end,
            Err(_) => ReadEnd::Closed,
        }
    }

    /// Offers the carried bytes alone to `consume` (a consumer that stopped
    /// taking input takes it again: edge-triggered readiness will not report
    /// these bytes a second time). Returns whether it stopped again.
    pub fn replay(&mut self, mut consume: impl FnMut(&[u8], &mut Vec<u8>) -> Consumed) -> bool {
        if self.carry.is_empty() {
            return false;
        }
        let carry = std::mem::take(&mut self.carry);
        let c = consume(&carry, &mut self.out);
        self.carry = carry;
        let used = c.used.min(self.carry.len());
        self.carry.drain(..used);
        self.release_empty();
        c.stop
    }

    fn keep_carry(&mut self, rest: &[u8]) {
        keep_carry(&mut self.carry, rest, self.keep);
    }

    fn release_empty(&mut self) {
        release_empty(&mut self.carry, self.keep);
    }

    /// Output not yet taken by the transport; TLS records the socket has
    /// not taken yet count as one byte (rustls does not say how many).
    #[inline]
    pub fn pending(&self) -> usize {
        self.out.len() - self.out_pos + usize::from(self.transport.has_buffered())
    }

    /// The output queue, to append to; [`Link::flush`] writes it.
    pub fn out_mut(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Writes `bytes` after any pending output: straight from the caller's
    /// buffer when nothing is pending, keeping only what the transport did
    /// not take.
    pub fn send(&mut self, bytes: &[u8], io: &mut IoCounts) -> Flush {
        if bytes.is_empty() {
            return if self.pending() == 0 {
                self.flush_transport()
            } else {
                self.flush(io)
            };
        }
        if self.pending() > 0 {
            self.out.extend_from_slice(bytes);
            return self.flush(io);
        }
        let mut pos = 0;
        while pos < bytes.len() {
            match Self::write_to(
                &mut self.transport,
                bytes.get(pos..).unwrap_or_default(),
                io,
            ) {
                Ok(n) => pos += n,
                Err(Flush::Blocked) => {
                    self.out.clear();
                    self.out_pos = 0;
                    self.out
                        .extend_from_slice(bytes.get(pos..).unwrap_or_default());
                    return Flush::Blocked;
                }
                Err(f) => return f,
            }
        }
        self.flush_transport()
    }

    /// Sends what the transport holds itself (TLS records; plain TCP holds
    /// nothing): the link's output is only gone once that is too.
    #[inline]
    fn flush_transport(&mut self) -> Flush {
        match self.transport.flush_buffered() {
            Ok(true) => Flush::Done,
            Ok(false) => Flush::Blocked,
            Err(_) => Flush::Failed,
        }
    }

    /// Secures the stream (STARTTLS): anything the client sent after the
    /// command and before the handshake is dropped unread, never executed
    /// (RFC 3207 4.2; the STARTTLS injection class, CVE-2011-0411).
    pub fn start_tls(&mut self, conn: impl Into<TlsConn>) {
        self.carry = Vec::new();
        self.transport.start_tls(conn);
    }

    /// Secures the stream with TLS from its next byte (implicit TLS after a
    /// PROXY header): unlike STARTTLS, what was read after the header is
    /// kept, as the first TLS records.
    pub fn start_tls_after_preamble(&mut self, conn: impl Into<TlsConn>) {
        let read = std::mem::take(&mut self.carry);
        self.transport.start_tls(conn);
        self.transport.already_read(read);
    }

    /// The stream underneath, to act on (TLS details).
    pub fn transport_mut(&mut self) -> &mut Transport {
        &mut self.transport
    }

    /// Writes pending output until done or the transport is full.
    pub fn flush(&mut self, io: &mut IoCounts) -> Flush {
        while self.out_pos < self.out.len() {
            let rest = self.out.get(self.out_pos..).unwrap_or_default();
            match Self::write_to(&mut self.transport, rest, io) {
                Ok(n) => self.out_pos += n,
                Err(f) => return f,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        // A burst (a huge pipelined batch, a slow reader) may have grown the
        // buffer; an idle connection does not keep that memory.
        if self.out.capacity() > self.keep.out {
            self.out = Vec::new();
        }
        self.flush_transport()
    }

    // Measured (callgrind): out of line it costs ~40 instructions a message.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn write_to(t: &mut Transport, bytes: &[u8], io: &mut IoCounts) -> Result<usize, Flush> {
        io.writes += 1;
        match t.write(bytes) {
            Ok(0) => Err(Flush::Failed),
            Ok(n) => {
                io.bytes_out += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Flush::Blocked),
            Err(_) => Err(Flush::Failed),
        }
    }

    /// Reads and drops unread input, at most four scratch-fulls. Closing a
    /// socket with unread input makes the kernel send RST, which can destroy
    /// replies the peer has not read yet; so a close first drains, and
    /// lingers when more keeps coming.
    pub fn discard_input(&mut self, scratch: &mut [u8]) -> Drain {
        for _ in 0..4 {
            match self.transport.read(scratch) {
                Ok(0) => return Drain::Eof,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drain::Empty,
                Err(_) => return Drain::Eof,
            }
        }
        Drain::More
    }

    /// Sends FIN after whatever output is queued; drops carried input.
    pub fn shutdown_write(&mut self) {
        self.carry = Vec::new();
        self.transport.shutdown_write();
    }
}

fn keep_carry(carry: &mut Vec<u8>, rest: &[u8], keep: Keep) {
    carry.clear();
    carry.extend_from_slice(rest);
    release_empty(carry, keep);
}

fn release_empty(carry: &mut Vec<u8>, keep: Keep) {
    if carry.is_empty() && carry.capacity() > keep.carry {
        *carry = Vec::new();
    }
}

/// Carried bytes are joined with at most this much of the next TLS record
/// (in the scratch buffer) to finish the line they start; once the consumer
/// has used them the rest of the record is offered where it lies.
const STITCH: usize = 1024;

/// A link's parts that TLS reading works with while the transport is
/// borrowed.
struct Parts<'a> {
    carry: &'a mut Vec<u8>,
    out: &'a mut Vec<u8>,
    keep: Keep,
    scratch: &'a mut [u8],
    io: &'a mut IoCounts,
}

impl Parts<'_> {
    /// Offers a record's plaintext `p` to `consume`: where it lies when
    /// nothing is carried, else the carry with the start of `p` joined in
    /// the scratch buffer. What the consumer leaves of what it was offered
    /// is carried; the part of `p` not offered (it stopped, or the scratch
    /// is full of carry) stays with the transport.
    fn offer(
        &mut self,
        p: &[u8],
        consume: &mut dyn FnMut(&[u8], &mut Vec<u8>) -> Consumed,
    ) -> Offer {
        let mut pos = 0;
        while pos < p.len() {
            let rest = p.get(pos..).unwrap_or_default();
            let carried = self.carry.len();
            let c = if carried == 0 {
                let c = consume(rest, self.out);
                keep_carry(
                    self.carry,
                    rest.get(c.used..).unwrap_or_default(),
                    self.keep,
                );
                pos = p.len();
                c
            } else {
                let fit = rest
                    .len()
                    .min(STITCH.max(carried))
                    .min(self.scratch.len().saturating_sub(carried));
                let (Some(joined), Some(piece)) =
                    (self.scratch.get_mut(..carried + fit), rest.get(..fit))
                else {
                    self.count(pos);
                    return Offer {
                        taken: pos,
                        stop: true,
                    };
                };
                if fit == 0 {
                    // The consumer left a whole buffer unconsumed: it is not
                    // taking input, whatever it said.
                    self.count(pos);
                    return Offer {
                        taken: pos,
                        stop: true,
                    };
                }
                let (head, tail) = joined.split_at_mut(carried);
                head.copy_from_slice(self.carry);
                tail.copy_from_slice(piece);
                let input = self.scratch.get(..carried + fit).unwrap_or_default();
                let c = consume(input, self.out);
                if c.used >= carried {
                    self.carry.clear();
                    pos += c.used - carried;
                    release_empty(self.carry, self.keep);
                } else {
                    keep_carry(
                        self.carry,
                        input.get(c.used..).unwrap_or_default(),
                        self.keep,
                    );
                    pos += fit;
                }
                c
            };
            if c.stop {
                // What was not offered stays with the transport: the carry
                // stays within one scratch buffer.
                self.count(pos);
                return Offer {
                    taken: pos,
                    stop: true,
                };
            }
        }
        self.count(pos);
        Offer {
            taken: pos,
            stop: false,
        }
    }

    fn count(&mut self, n: usize) {
        self.io.reads += 1;
        self.io.bytes_in += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// A link over a real loopback connection, and the other end.
    fn pair(keep: Keep) -> (Link, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let t = Transport::tcp(mio::net::TcpStream::from_std(ours));
        (Link::new(t, keep), peer)
    }

    /// Reads until `n` bytes came or a 10 s deadline passed.
    fn read_n(link: &mut Link, scratch: &mut [u8], n: usize, f: &mut Vec<u8>) {
        let mut io = IoCounts::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while f.len() < n && std::time::Instant::now() < deadline {
            link.read_with(scratch, usize::MAX, false, &mut io, |input, _| {
                // Consume whole lines only, like a session would.
                let used = input.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                f.extend_from_slice(&input[..used]);
                Consumed { used, stop: false }
            });
        }
    }

    #[test]
    fn partial_lines_are_carried_and_replayed() {
        let (mut link, mut peer) = pair(Keep { carry: 64, out: 0 });
        let mut scratch = vec![0u8; 1024];
        let mut got = Vec::new();
        peer.write_all(b"NOOP\r\nRS").unwrap();
        read_n(&mut link, &mut scratch, 6, &mut got);
        assert_eq!(got, b"NOOP\r\n");
        assert_eq!(link.carried(), 2);
        peer.write_all(b"ET\r\n").unwrap();
        read_n(&mut link, &mut scratch, 12, &mut got);
        assert_eq!(got, b"NOOP\r\nRSET\r\n");
        assert_eq!(link.carried(), 0);
        // A consumer that stopped gets its carry again without new input.
        peer.write_all(b"A\r\nB\r\n").unwrap();
        let mut io = IoCounts::default();
        let mut end = ReadEnd::Drained;
        for _ in 0..1000 {
            end = link.read_with(&mut scratch, usize::MAX, false, &mut io, |_, _| Consumed {
                used: 3,
                stop: true,
            });
            if end == ReadEnd::Stopped {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(end, ReadEnd::Stopped);
        assert_eq!(link.carried(), 3);
        let mut replayed = Vec::new();
        let stopped = link.replay(|input, _| {
            replayed.extend_from_slice(input);
            Consumed {
                used: input.len(),
                stop: false,
            }
        });
        assert!(!stopped);
        assert_eq!(replayed, b"B\r\n");
        assert_eq!(link.carried(), 0);
    }

    #[test]
    fn send_spills_only_what_the_socket_refuses_and_releases_it_when_drained() {
        let (mut link, mut peer) = pair(Keep { carry: 64, out: 0 });
        let mut io = IoCounts::default();
        assert_eq!(link.send(b"220 hi\r\n", &mut io), Flush::Done);
        assert_eq!(
            link.footprint(),
            0,
            "nothing kept when the socket took it all"
        );
        // Far more than the socket buffers hold while the peer does not read.
        let big = vec![b'x'; 64 << 20];
        assert_eq!(link.send(&big, &mut io), Flush::Blocked);
        let spilled = link.pending();
        assert!(spilled > 0 && spilled < big.len());
        let reader = std::thread::spawn(move || {
            let mut total = 0;
            let mut buf = vec![0u8; 1 << 16];
            while total < 8 + (64 << 20) {
                let n = peer.read(&mut buf).unwrap();
                assert!(n > 0);
                total += n;
            }
            total
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while link.flush(&mut io) != Flush::Done {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(reader.join().unwrap(), 8 + (64 << 20));
        assert_eq!(link.pending(), 0);
        assert_eq!(link.footprint(), 0, "the spill is released once written");
        assert_eq!(io.bytes_out, 8 + (64 << 20));
    }
}
