//! The byte stream under a connection: plain TCP, or TLS over it.
//!
//! Both variants read and write plaintext through the same calls, so neither
//! the buffers ([`super::Link`]) nor the protocol above change when a
//! connection is secured: STARTTLS switches a plain stream to TLS in place
//! ([`Transport::start_tls`]); implicit TLS starts with it.
//!
//! TLS is rustls driven by hand on the non-blocking socket, inside the same
//! readiness events as everything else: a read pulls records from the
//! socket, processes them (handshake messages included) and sends whatever
//! the handshake wants to say; a write hands plaintext to rustls and sends
//! the records it makes. Records the socket did not take stay inside rustls
//! (at most one write's worth: a write is refused while any are waiting)
//! and go out with the next flush ([`Transport::flush_buffered`]), which
//! the link calls whenever it flushes. Retries EINTR; every other error goes
//! to the caller.

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::{ClientConnection, Connection, ServerConnection};
use std::io::{self, Read, Write};
use std::net::SocketAddr;

/// A connection's byte stream.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<Tls>),
    /// No stream: only while a plain one is being switched to TLS.
    Detached,
}

/// A TLS connection and its socket.
pub struct Tls {
    sock: TcpStream,
    conn: Connection,
    /// Why the handshake or a record failed, for statistics.
    failure: Option<TlsFailure>,
    /// Ciphertext read but not yet handed to rustls (a gulp whose plaintext
    /// did not fit the reader's buffer), from `left_pos` on.
    left: Vec<u8>,
    left_pos: usize,
    /// The stream ended (`close_notify`, or a close without one).
    eof: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshaking", &self.conn.is_handshaking())
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// Why a TLS connection failed, in classes a person can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsFailure {
    /// Not TLS at all, or malformed records (a plaintext client on a TLS
    /// port, garbage).
    NotTls,
    /// No protocol version, cipher suite or group in common.
    Incompatible,
    /// The peer sent an alert (it refused our certificate, say).
    AlertReceived,
    /// The peer's certificate was refused (clients: unknown issuer, wrong
    /// name, expired).
    BadCertificate,
    /// Decryption failed, or the peer broke the protocol's rules.
    Protocol,
    /// Anything else rustls reports.
    Other,
    /// The handshake never finished: the peer closed, or timed out.
    Abandoned,
}

impl TlsFailure {
    /// Every class, for tables that list them all.
    pub const ALL: [TlsFailure; 7] = [
        TlsFailure::NotTls,
        TlsFailure::Incompatible,
        TlsFailure::AlertReceived,
        TlsFailure::BadCertificate,
        TlsFailure::Protocol,
        TlsFailure::Other,
        TlsFailure::Abandoned,
    ];

    /// A label for metrics and reports.
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::NotTls => "not_tls",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::AlertReceived => "alert_received",
            TlsFailure::BadCertificate => "bad_certificate",
            TlsFailure::Protocol => "protocol",
            TlsFailure::Other => "other",
            TlsFailure::Abandoned => "abandoned",
        }
    }

    fn of(e: &rustls::Error) -> Self {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => TlsFailure::NotTls,
            E::PeerIncompatible(_) => TlsFailure::Incompatible,
            E::AlertReceived(_) => TlsFailure::AlertReceived,
            E::InvalidCertificate(_) | E::NoCertificatesPresented => TlsFailure::BadCertificate,
            E::InappropriateHandshakeMessage { .. } | E::DecryptError | E::PeerMisbehaved(_) => {
                TlsFailure::Protocol
            }
            _ => TlsFailure::Other,
        }
    }
}

/// What a finished handshake agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: &'static str,
    /// The IANA name of the cipher suite.
    pub cipher: &'static str,
    /// The session was resumed (a ticket or session id), not a full handshake.
    pub resumed: bool,
}

/// The largest plaintext rustls buffers before it refuses more (a client
/// that never reads cannot make a TLS connection hold more than a plain
/// one); rustls's own default.
const TLS_BUFFER: usize = 64 * 1024;

impl Transport {
    /// A TCP stream; small writes leave at once (Nagle would hold replies
    /// and pipelined commands).
    pub fn tcp(sock: TcpStream) -> Self {
        let _ = sock.set_nodelay(true);
        Transport::Plain(sock)
    }

    /// A TCP stream that speaks TLS as a server from its first byte.
    pub fn tls_server(sock: TcpStream, conn: ServerConnection) -> Self {
        let _ = sock.set_nodelay(true);
        Self::secure(sock, conn.into())
    }

    /// A TCP stream that speaks TLS as a client from its first byte.
    pub fn tls_client(sock: TcpStream, conn: ClientConnection) -> Self {
        let _ = sock.set_nodelay(true);
        Self::secure(sock, conn.into())
    }

    fn secure(sock: TcpStream, mut conn: Connection) -> Self {
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Transport::Tls(Box::new(Tls {
            sock,
            conn,
            failure: None,
            left: Vec::new(),
            left_pos: 0,
            eof: false,
        }))
    }

    /// Switches a plain stream to TLS in place (STARTTLS); the socket keeps
    /// its registration. A stream already secured is left as it is.
    pub fn start_tls(&mut self, conn: impl Into<Connection>) {
        let taken = std::mem::replace(self, Transport::Detached);
        *self = match taken {
            Transport::Plain(sock) => Self::secure(sock, conn.into()),
            other => other,
        };
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Whether a TLS handshake is still in progress.
    pub fn handshaking(&self) -> bool {
        match self {
            Transport::Tls(t) => t.conn.is_handshaking(),
            Transport::Plain(_) | Transport::Detached => false,
        }
    }

    /// What the handshake agreed on, once it is done.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let Transport::Tls(t) = self else {
            return None;
        };
        if t.conn.is_handshaking() {
            return None;
        }
        let version = match t.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "other",
        };
        let cipher = t
            .conn
            .negotiated_cipher_suite()?
            .suite()
            .as_str()
            .unwrap_or("unknown");
        let resumed = matches!(
            t.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        Some(TlsInfo {
            version,
            cipher,
            resumed,
        })
    }

    /// Why TLS failed on this stream, if it did.
    pub fn tls_failure(&self) -> Option<TlsFailure> {
        match self {
            Transport::Tls(t) => t.failure,
            Transport::Plain(_) | Transport::Detached => None,
        }
    }

    /// Reads what is there, retrying EINTR. Through TLS: decrypted bytes,
    /// as many as `buf` holds or the socket has (a short read means the
    /// socket is dry, as for plain TCP).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => retry(|| s.read(buf)),
            Transport::Tls(t) => t.read(buf),
            Transport::Detached => Ok(0),
        }
    }

    /// Writes what the stream takes, retrying EINTR. Through TLS: plaintext
    /// handed to rustls, refused (`WouldBlock`) while records it made
    /// earlier still wait for the socket.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => retry(|| s.write(buf)),
            Transport::Tls(t) => t.write(buf),
            Transport::Detached => Err(detached()),
        }
    }

    /// Sends what the stream holds itself (TLS records the socket did not
    /// take); `Ok(false)` while some still wait. Plain TCP holds nothing.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn flush_buffered(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) | Transport::Detached => Ok(true),
            Transport::Tls(t) => t.push(),
        }
    }

    /// Drives a TLS handshake as far as the socket allows, taking no
    /// application data (what arrives with the last handshake records stays
    /// for [`Transport::read`]): `Ok(true)` while it is still in progress.
    /// A plain stream has none.
    pub fn handshake(&mut self) -> io::Result<bool> {
        let Transport::Tls(t) = self else {
            return Ok(false);
        };
        while t.conn.is_handshaking() {
            if !t.push()? {
                return Ok(true);
            }
            match retry(|| t.conn.read_tls(&mut t.sock)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
            t.process()?;
        }
        // The last flight (a client's Finished) goes now.
        t.push()?;
        Ok(false)
    }

    /// Whether the stream holds output of its own (TLS records).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn has_buffered(&self) -> bool {
        match self {
            Transport::Tls(t) => t.conn.wants_write(),
            Transport::Plain(_) | Transport::Detached => false,
        }
    }

    /// Sends FIN after whatever output is queued (TLS: a `close_notify` first).
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Transport::Tls(t) => {
                t.conn.send_close_notify();
                let _ = t.push();
                let _ = t.sock.shutdown(std::net::Shutdown::Write);
            }
            Transport::Detached => {}
        }
    }

    fn sock(&self) -> io::Result<&TcpStream> {
        match self {
            Transport::Plain(s) => Ok(s),
            Transport::Tls(t) => Ok(&t.sock),
            Transport::Detached => Err(detached()),
        }
    }

    fn sock_mut(&mut self) -> io::Result<&mut TcpStream> {
        match self {
            Transport::Plain(s) => Ok(s),
            Transport::Tls(t) => Ok(&mut t.sock),
            Transport::Detached => Err(detached()),
        }
    }

    /// The peer's address; an error while a connect is still in progress.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock()?.peer_addr()
    }

    /// The pending socket error (how a non-blocking connect failed).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock()?.take_error()
    }
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "no stream")
}

/// Ciphertext is read from the socket in gulps this big, into one buffer
/// per thread (per event loop): rustls alone reads 4 KiB at a time, a
/// syscall per 4 KiB of a large message.
const GULP: usize = 64 * 1024;

thread_local! {
    static GULP_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; GULP]);
}

/// How a gulp from the socket went.
enum Gulp {
    /// The socket is dry for now.
    Dry,
    /// The peer closed (or the connection failed after what was read).
    Eof,
    /// Read this many bytes and handed them over; the socket may hold more.
    Full,
    /// Read less than a gulp: the socket is dry after it.
    Short,
}

impl Tls {
    /// Plaintext into `buf` from `filled` on: decrypted records first, then
    /// ciphertext left from the last call, then gulps from the socket, until
    /// `buf` is full or the socket is dry. A short result means the socket
    /// is dry (as for plain TCP); `Ok(0)` only at the end of the stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        if self.drain(buf, &mut filled)? || filled == buf.len() {
            return Ok(filled);
        }
        if self.left_pos < self.left.len() {
            let left = std::mem::take(&mut self.left);
            let used = self.absorb(
                left.get(self.left_pos..).unwrap_or_default(),
                buf,
                &mut filled,
            );
            self.left = left;
            self.left_pos += used?;
            if self.left_pos >= self.left.len() {
                // An idle connection keeps no ciphertext buffer.
                self.left = Vec::new();
                self.left_pos = 0;
            }
            if filled == buf.len() || self.eof {
                return Ok(filled);
            }
        }
        loop {
            match self.gulp(buf, &mut filled)? {
                Gulp::Full if filled < buf.len() && !self.eof => {}
                Gulp::Dry => {
                    // Whatever the handshake wants to say goes now.
                    self.push()?;
                    return if filled > 0 {
                        Ok(filled)
                    } else {
                        Err(io::ErrorKind::WouldBlock.into())
                    };
                }
                Gulp::Eof => return Ok(filled),
                Gulp::Full | Gulp::Short if filled > 0 || self.eof => return Ok(filled),
                // Only records that yield no plaintext (handshake, tickets):
                // the socket is dry.
                Gulp::Full | Gulp::Short => {
                    self.push()?;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
        }
    }

    /// Reads one gulp from the socket and hands it to rustls; what `buf`
    /// has no room for the plaintext of waits in `left`.
    fn gulp(&mut self, buf: &mut [u8], filled: &mut usize) -> io::Result<Gulp> {
        GULP_BUF.with(|cell| {
            let Ok(mut g) = cell.try_borrow_mut() else {
                return Err(io::Error::other("TLS read re-entered"));
            };
            // No more ciphertext than `buf` has room for: its plaintext is
            // smaller, so it fits and nothing is left over to copy aside
            // (but at least a record header's worth, to make progress).
            let room = buf.len().saturating_sub(*filled).clamp(64, g.len());
            let Some(space) = g.get_mut(..room) else {
                return Ok(Gulp::Dry);
            };
            let n = match retry(|| self.sock.read(space)) {
                Ok(0) => return Ok(Gulp::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Gulp::Dry),
                Err(e) => return Err(e),
            };
            let got = g.get(..n).unwrap_or_default();
            let used = self.absorb(got, buf, filled)?;
            if used < n {
                self.left.clear();
                self.left
                    .extend_from_slice(got.get(used..).unwrap_or_default());
                self.left_pos = 0;
            }
            Ok(if n == room { Gulp::Full } else { Gulp::Short })
        })
    }

    /// Hands `cipher` to rustls record by record, moving the plaintext into
    /// `buf` as it comes, until `cipher` is used up or `buf` is full (or the
    /// peer's `close_notify` came); returns the bytes of `cipher` taken.
    fn absorb(
        &mut self,
        mut cipher: &[u8],
        buf: &mut [u8],
        filled: &mut usize,
    ) -> io::Result<usize> {
        let total = cipher.len();
        while !cipher.is_empty() && *filled < buf.len() && !self.eof {
            if self.conn.read_tls(&mut cipher)? == 0 {
                break;
            }
            self.process()?;
            if self.conn.wants_write() {
                self.push()?;
            }
            self.drain(buf, filled)?;
        }
        Ok(total - cipher.len())
    }

    /// Moves decrypted plaintext into `buf`; true once the peer's
    /// `close_notify` (or a close without one) has been seen.
    fn drain(&mut self, buf: &mut [u8], filled: &mut usize) -> io::Result<bool> {
        while *filled < buf.len() {
            match self
                .conn
                .reader()
                .read(buf.get_mut(*filled..).unwrap_or_default())
            {
                // The peer's close_notify: the end, after what came before.
                Ok(0) => self.eof = true,
                Ok(n) => {
                    *filled += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: an end, as for TCP.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.eof = true,
                Err(e) => return Err(e),
            }
            break;
        }
        Ok(self.eof)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.push()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            // rustls's buffer is full (a handshake that has not finished
            // holds the plaintext): wait for the socket like a full one.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.push()?;
        Ok(n)
    }

    /// Processes the records handed to rustls; a failure is classed for
    /// the statistics and the alert rustls queued for the peer is sent.
    fn process(&mut self) -> io::Result<()> {
        if let Err(e) = self.conn.process_new_packets() {
            self.failure.get_or_insert(TlsFailure::of(&e));
            let _ = self.push();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }

    /// Writes queued records until none is left (`true`) or the socket is
    /// full (`false`).
    fn push(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match retry(|| self.conn.write_tls(&mut self.sock)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Runs `op` again while a signal interrupts it.
fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

impl Source for Transport {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.sock_mut()?.register(r, t, i)
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.sock_mut()?.reregister(r, t, i)
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.sock_mut()?.deregister(r)
    }
}
