//! The byte stream under a connection: plain, or TLS over it, on a TCP or
//! UNIX socket ([`Stream`]).
//!
//! Both variants read and write plaintext through the same calls, so neither
//! the buffers ([`super::Link`]) nor the protocol above change when a
//! connection is secured: STARTTLS switches a plain stream to TLS in place
//! ([`Transport::start_tls`]); implicit TLS starts with it.
//!
//! TLS is rustls's unbuffered API driven by hand on the non-blocking socket,
//! inside the same readiness events as everything else. Its cost for bulk
//! data is in the copies, so there are as few as rustls allows:
//! - Reading: ciphertext comes from the socket in gulps into one buffer per
//!   event loop, where rustls decrypts each record; the record's plaintext
//!   (which rustls hands out from a buffer of its own) is offered to the
//!   consumer as it lies ([`Tls::read_plain`]), not copied into ours. Only a
//!   record not complete yet (or records a consumer that stopped did not get
//!   to) is kept per connection between reads.
//! - Writing: plaintext is encrypted into one buffer per event loop and sent
//!   from there; only what the socket refuses is kept (at most one write's
//!   worth: a write is refused while any is waiting) and goes out with the
//!   next flush ([`Transport::flush_buffered`]), which the link calls
//!   whenever it flushes.
//!
//! Retries EINTR; every other error goes to the caller.

use super::{ReadEnd, Stream};
use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, ReadTraffic, UnbufferedStatus,
    WriteTraffic,
};
use std::io::{self, Read, Write};

/// A connection's byte stream.
#[derive(Debug)]
pub enum Transport {
    /// Plain.
    Plain(Stream),
    /// TLS over the socket.
    Tls(Box<Tls>),
    /// No stream: only while a plain one is being switched to TLS.
    Detached,
}

/// One side of a TLS connection, before its first byte.
pub enum TlsConn {
    /// We are the server.
    Server(UnbufferedServerConnection),
    /// We are the client.
    Client(UnbufferedClientConnection),
}

impl From<UnbufferedServerConnection> for TlsConn {
    fn from(c: UnbufferedServerConnection) -> Self {
        TlsConn::Server(c)
    }
}

impl From<UnbufferedClientConnection> for TlsConn {
    fn from(c: UnbufferedClientConnection) -> Self {
        TlsConn::Client(c)
    }
}

impl TlsConn {
    fn common(&self) -> &rustls::CommonState {
        match self {
            TlsConn::Server(c) => c,
            TlsConn::Client(c) => c,
        }
    }
}

/// A TLS connection and its socket.
pub struct Tls {
    sock: Stream,
    conn: TlsConn,
    st: TlsState,
}

/// A TLS connection's buffers and flags (apart from rustls's own state).
#[derive(Default)]
struct TlsState {
    /// Ciphertext kept between reads: a record not complete yet, or records
    /// a consumer that stopped did not get to.
    left: Vec<u8>,
    /// Records made but not taken by the socket yet, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Plaintext written before the handshake allowed encrypting it.
    early: Vec<u8>,
    /// Plaintext decrypted but not read yet (records processed to make
    /// room for a write, or not taken by a consumer), from `stash_pos` on.
    stash: Vec<u8>,
    stash_pos: usize,
    /// The stream ended (`close_notify`, or a close without one).
    eof: bool,
    /// Our `close_notify` is queued.
    closing: bool,
    /// A record, the handshake or the socket failed: rustls is not asked
    /// again (what it keeps of the ciphertext no longer matches `left`).
    broken: bool,
    /// Why the handshake or a record failed, for statistics.
    failure: Option<TlsFailure>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshaking", &self.conn.common().is_handshaking())
            .field("failure", &self.st.failure)
            .finish_non_exhaustive()
    }
}

/// What a reader did with plaintext it was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Bytes taken from the start; the rest is kept and offered again.
    pub taken: usize,
    /// Offer nothing more for now.
    pub stop: bool,
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

/// The most plaintext one write takes, and the most held for a handshake
/// that has not finished (a client that never reads cannot make a TLS
/// connection hold more than a plain one).
const TLS_BUFFER: usize = 64 * 1024;

/// Ciphertext is read from the socket in gulps this big (and a handshake
/// message may be at most about this big), into one buffer per thread (per
/// event loop).
const GULP: usize = 64 * 1024;

/// Records of one write's plaintext: [`TLS_BUFFER`] plus each record's
/// header, content type and tag.
const SEAL: usize = TLS_BUFFER + 2048;

/// A queue of records this big or smaller is kept for the next one when
/// the socket has taken it.
const OUT_KEEP: usize = 4096;

thread_local! {
    static GULP_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; GULP]);
    static SEAL_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SEAL]);
}

impl Transport {
    /// A TCP stream; small writes leave at once (Nagle would hold replies
    /// and pipelined commands).
    pub fn tcp(sock: TcpStream) -> Self {
        Transport::Plain(sock.into())
    }

    /// A UNIX stream socket.
    pub fn unix(sock: UnixStream) -> Self {
        Transport::Plain(Stream::Unix(sock))
    }

    /// A plain stream, TCP or UNIX, as a listener accepted it.
    pub fn plain(sock: Stream) -> Self {
        Transport::Plain(sock)
    }

    /// A TCP stream that speaks TLS as a server from its first byte.
    pub fn tls_server(sock: TcpStream, conn: UnbufferedServerConnection) -> Self {
        Self::secure(sock.into(), conn.into())
    }

    /// A stream that speaks TLS as a client from its first byte.
    pub fn tls_client(sock: impl Into<Stream>, conn: UnbufferedClientConnection) -> Self {
        Self::secure(sock.into(), conn.into())
    }

    fn secure(sock: Stream, conn: TlsConn) -> Self {
        Transport::Tls(Box::new(Tls {
            sock,
            conn,
            st: TlsState::default(),
        }))
    }

    /// Switches a plain stream to TLS in place (STARTTLS); the socket keeps
    /// its registration. A stream already secured is left as it is.
    pub fn start_tls(&mut self, conn: impl Into<TlsConn>) {
        let taken = std::mem::replace(self, Transport::Detached);
        *self = match taken {
            Transport::Plain(sock) => Self::secure(sock, conn.into()),
            other => other,
        };
    }

    /// Queues `bytes` to go on the wire as they are, before anything else
    /// this stream sends, TLS included (a PROXY protocol header in front of
    /// implicit TLS). Only before the stream has sent anything; false for a
    /// plain stream, whose caller queues the bytes as its first output.
    pub fn send_first(&mut self, bytes: &[u8]) -> bool {
        match self {
            Transport::Tls(t) if t.st.out.is_empty() => {
                t.st.out.extend_from_slice(bytes);
                true
            }
            Transport::Tls(_) | Transport::Plain(_) | Transport::Detached => false,
        }
    }

    /// Ciphertext read before the stream became TLS (after a PROXY
    /// header): processed before anything read from the socket.
    /// More than a gulp cannot be a client's first flight: the stream
    /// fails (a protocol failure) rather than drop any of it.
    pub fn already_read(&mut self, bytes: Vec<u8>) {
        if let Transport::Tls(t) = self {
            if bytes.len() > GULP || !t.st.left.is_empty() {
                t.st.failure.get_or_insert(TlsFailure::Protocol);
                t.st.broken = true;
            } else {
                t.st.left = bytes;
            }
        }
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Whether a TLS handshake is still in progress.
    pub fn handshaking(&self) -> bool {
        match self {
            Transport::Tls(t) => t.conn.common().is_handshaking(),
            Transport::Plain(_) | Transport::Detached => false,
        }
    }

    /// What the handshake agreed on, once it is done.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let Transport::Tls(t) = self else {
            return None;
        };
        let c = t.conn.common();
        if c.is_handshaking() {
            return None;
        }
        let version = match c.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "other",
        };
        let cipher = c
            .negotiated_cipher_suite()?
            .suite()
            .as_str()
            .unwrap_or("unknown");
        let resumed = matches!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        Some(TlsInfo {
            version,
            cipher,
            resumed,
        })
    }

    /// Why TLS failed on this stream, if it did.
    pub fn tls_failure(&self) -> Option<TlsFailure> {
        match self {
            Transport::Tls(t) => t.st.failure,
            Transport::Plain(_) | Transport::Detached => None,
        }
    }

    /// Reads what is there, retrying EINTR, as many bytes as `buf` holds or
    /// the socket has. Through TLS: decrypted bytes, copied into `buf` (the
    /// link reads TLS with [`Tls::read_plain`] instead, without the copy).
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
    /// encrypted and sent, refused (`WouldBlock`) while records made earlier
    /// still wait for the socket.
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
    /// take, plaintext written before the handshake allowed it); `Ok(false)`
    /// while some still waits. Plain TCP holds nothing.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn flush_buffered(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) | Transport::Detached => Ok(true),
            Transport::Tls(t) => t.flush(),
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
        t.handshake()
    }

    /// Whether the stream holds output of its own (TLS records, or
    /// plaintext waiting for the handshake).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn has_buffered(&self) -> bool {
        match self {
            Transport::Tls(t) => t.has_buffered(),
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
                let _ = t.pass_left(&mut Goal::Close);
                let _ = t.push();
                let _ = t.sock.shutdown(std::net::Shutdown::Write);
            }
            Transport::Detached => {}
        }
    }

    fn sock(&self) -> io::Result<&Stream> {
        match self {
            Transport::Plain(s) => Ok(s),
            Transport::Tls(t) => Ok(&t.sock),
            Transport::Detached => Err(detached()),
        }
    }

    fn sock_mut(&mut self) -> io::Result<&mut Stream> {
        match self {
            Transport::Plain(s) => Ok(s),
            Transport::Tls(t) => Ok(&mut t.sock),
            Transport::Detached => Err(detached()),
        }
    }

    /// Whether the connect has completed.
    pub fn connected(&self) -> bool {
        self.sock().is_ok_and(Stream::connected)
    }

    /// The pending socket error (how a non-blocking connect failed).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock()?.take_error()
    }
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "no stream")
}

/// What a pass over the records does besides processing them.
enum Goal<'a> {
    /// Reading: each record's plaintext is offered.
    Read,
    /// Writing `data` (as much as fits one write): encrypted into `seal`
    /// once the handshake allows, held in `early` before.
    Write { data: &'a [u8], seal: &'a mut [u8] },
    /// Queueing our `close_notify`.
    Close,
}

/// How a pass over the records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    /// Every whole record is processed: more ciphertext is needed.
    Idle,
    /// The reader stopped taking plaintext.
    Stopped,
}

/// What a pass over the records did.
#[derive(Debug, Clone, Copy)]
struct Pass {
    halt: Halt,
    /// Bytes of a write's data taken (encrypted or held).
    taken: usize,
    /// Bytes of records at the start of the write's `seal`.
    sealed: usize,
}

/// rustls's two connection sides, which process records alike.
trait Records {
    type Data;
    fn common(&self) -> &rustls::CommonState;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

/// rustls defines `process_tls_records` for each side apart (same name,
/// same behaviour).
macro_rules! records_for {
    ($conn:ty, $data:ty) => {
        impl Records for $conn {
            type Data = $data;
            fn common(&self) -> &rustls::CommonState {
                self
            }
            fn records<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
        }
    };
}

records_for!(UnbufferedServerConnection, ServerConnectionData);
records_for!(UnbufferedClientConnection, ClientConnectionData);

/// Processes the records in `buf` from `*start` on (moving `*start` past
/// what rustls is done with) until every whole one is processed or the
/// reader stops: decrypted plaintext goes to `offer` (what it does not take
/// to the stash), records to send to `st.out`, and the goal's work is done
/// when the handshake allows it. A failure is classed for the statistics
/// and the alert rustls made for the peer is queued.
fn pass<C: Records>(
    conn: &mut C,
    st: &mut TlsState,
    buf: &mut [u8],
    start: &mut usize,
    goal: &mut Goal<'_>,
    offer: &mut dyn FnMut(&[u8]) -> Offer,
) -> io::Result<Pass> {
    let mut done = Pass {
        halt: Halt::Idle,
        taken: 0,
        sealed: 0,
    };
    loop {
        let UnbufferedStatus { mut discard, state } =
            conn.records(buf.get_mut(*start..).unwrap_or_default());
        let mut idle = false;
        let mut failed = None;
        match state {
            Err(e) => failed = Some(e),
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                failed = read_traffic(&mut traffic, st, &mut done, &mut discard, offer);
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => encode_into(&mut encode, &mut st.out),
            // The records are in `st.out`; they go when the socket takes them.
            Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
            Ok(ConnectionState::BlockedHandshake) => {
                if let Goal::Write { data, .. } = goal {
                    // Held until the handshake allows encrypting it.
                    let rest = data.get(done.taken..).unwrap_or_default();
                    let n = rest.len().min(TLS_BUFFER.saturating_sub(st.early.len()));
                    st.early
                        .extend_from_slice(rest.get(..n).unwrap_or_default());
                    done.taken += n;
                }
                idle = true;
            }
            Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                write_traffic(&mut traffic, st, goal, &mut done)?;
                idle = true;
            }
            Ok(ConnectionState::PeerClosed) => st.eof = true,
            Ok(ConnectionState::Closed) => {
                st.eof = true;
                idle = true;
            }
            // Early data is never accepted (0-RTT SMTP commands could be
            // replayed), so rustls does not offer it.
            Ok(_) => {
                failed = Some(rustls::Error::General("unexpected TLS state".into()));
            }
        }
        *start += discard;
        if let Some(e) = failed {
            st.failure.get_or_insert(TlsFailure::of(&e));
            // Plaintext held for the handshake can never be sent now.
            st.early = Vec::new();
            queue_alert(conn, st, buf, start);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if done.halt == Halt::Stopped || idle {
            return Ok(done);
        }
    }
}

/// Offers each decrypted record's plaintext (once the reader stopped, or
/// what it does not take, goes to the stash); a record that failed is the
/// error returned.
fn read_traffic<D>(
    traffic: &mut ReadTraffic<'_, '_, D>,
    st: &mut TlsState,
    done: &mut Pass,
    discard: &mut usize,
    offer: &mut dyn FnMut(&[u8]) -> Offer,
) -> Option<rustls::Error> {
    while let Some(record) = traffic.next_record() {
        let record = match record {
            Ok(record) => record,
            Err(e) => return Some(e),
        };
        *discard += record.discard;
        let payload = record.payload;
        let taken = if done.halt == Halt::Stopped {
            0
        } else {
            let o = offer(payload);
            if o.stop {
                done.halt = Halt::Stopped;
            }
            o.taken.min(payload.len())
        };
        if let Some(rest) = payload.get(taken..).filter(|r| !r.is_empty()) {
            st.stash.extend_from_slice(rest);
        }
    }
    None
}

/// Appends a handshake (or alert) record rustls made to `out`.
fn encode_into<D>(encode: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) {
    let at = out.len();
    let mut room = 4096;
    loop {
        out.resize(at + room, 0);
        match encode.encode(out.get_mut(at..).unwrap_or_default()) {
            Ok(n) => {
                out.truncate(at + n);
                return;
            }
            Err(EncodeError::InsufficientSize(s)) if s.required_size > room => {
                room = s.required_size;
            }
            Err(_) => {
                out.truncate(at);
                return;
            }
        }
    }
}

/// The handshake allows application data: what was held for it is
/// encrypted first, then the goal's data or `close_notify`.
fn write_traffic<D>(
    traffic: &mut WriteTraffic<'_, D>,
    st: &mut TlsState,
    goal: &mut Goal<'_>,
    done: &mut Pass,
) -> io::Result<()> {
    if !st.early.is_empty() {
        let early = std::mem::take(&mut st.early);
        seal_into(&mut st.out, &early, |d, o| traffic.encrypt(d, o))?;
    }
    match goal {
        Goal::Write { data, seal } if done.taken < data.len() => {
            let seal: &mut [u8] = seal;
            let data = data.get(done.taken..).unwrap_or_default();
            match traffic.encrypt(data, seal) {
                Ok(n) => done.sealed = n,
                // Larger than the buffer after all: the queue takes it.
                Err(EncryptError::InsufficientSize(_)) => {
                    seal_into(&mut st.out, data, |d, o| traffic.encrypt(d, o))?;
                }
                Err(EncryptError::EncryptExhausted) => {
                    st.failure.get_or_insert(TlsFailure::Other);
                    return Err(exhausted());
                }
            }
            done.taken += data.len();
        }
        Goal::Close if !st.closing => {
            st.closing = true;
            seal_into(&mut st.out, &[], |_, o| traffic.queue_close_notify(o))?;
        }
        Goal::Read | Goal::Write { .. } | Goal::Close => {}
    }
    Ok(())
}

/// After a failure: queues the alert rustls made for the peer, if any.
/// Only while rustls holds records to send: once they are taken it would
/// parse the failed input again (and, in a debug build, assert that it
/// never sends a second fatal alert).
fn queue_alert<C: Records>(conn: &mut C, st: &mut TlsState, buf: &mut [u8], start: &mut usize) {
    for _ in 0..4 {
        if !conn.common().wants_write() {
            return;
        }
        let UnbufferedStatus { discard, state } =
            conn.records(buf.get_mut(*start..).unwrap_or_default());
        let more = match state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                encode_into(&mut encode, &mut st.out);
                true
            }
            _ => false,
        };
        *start += discard;
        if !more {
            return;
        }
    }
}

/// Appends the records `seal` makes of `data` to `out`, growing it as
/// rustls asks.
fn seal_into(
    out: &mut Vec<u8>,
    data: &[u8],
    mut seal: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let at = out.len();
    let mut room = data.len() + 64;
    loop {
        out.resize(at + room, 0);
        match seal(data, out.get_mut(at..).unwrap_or_default()) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(s)) if s.required_size > room => {
                room = s.required_size;
            }
            Err(_) => {
                out.truncate(at);
                return Err(exhausted());
            }
        }
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "TLS failed")
}

fn exhausted() -> io::Error {
    io::Error::other("TLS: cannot encrypt more on this connection")
}

impl Tls {
    /// One pass over `buf[*start..]` for this side.
    fn pass(
        &mut self,
        buf: &mut [u8],
        start: &mut usize,
        goal: &mut Goal<'_>,
        offer: &mut dyn FnMut(&[u8]) -> Offer,
    ) -> io::Result<Pass> {
        let r = match &mut self.conn {
            TlsConn::Server(c) => pass(c, &mut self.st, buf, start, goal, offer),
            TlsConn::Client(c) => pass(c, &mut self.st, buf, start, goal, offer),
        };
        if r.is_err() {
            // `start` may not have moved past what rustls discarded.
            self.st.broken = true;
        }
        r
    }

    /// One pass over the ciphertext kept from earlier reads, for a write or
    /// a close: decrypted plaintext goes to the stash.
    fn pass_left(&mut self, goal: &mut Goal<'_>) -> io::Result<Pass> {
        if self.st.broken {
            return Err(broken());
        }
        let mut left = std::mem::take(&mut self.st.left);
        let mut start = 0;
        let r = self.pass(&mut left, &mut start, goal, &mut |_| Offer {
            taken: 0,
            stop: false,
        });
        left.drain(..start.min(left.len()));
        self.st.left = left;
        r
    }

    /// Offers plaintext to `offer` record by record (each as rustls holds
    /// it: no copy here) until it stops, the socket is dry, `budget` bytes
    /// were offered, or the stream ends. Plaintext not taken is kept and
    /// offered first next time. `drain`: read until the socket says it is
    /// dry (otherwise a short read is taken to mean so, as for plain TCP);
    /// `secure_only`: stop once the handshake is done.
    pub fn read_plain(
        &mut self,
        budget: usize,
        drain: bool,
        offer: &mut dyn FnMut(&[u8]) -> Offer,
    ) -> io::Result<ReadEnd> {
        self.read_until(budget, drain, false, offer)
    }

    fn read_until(
        &mut self,
        budget: usize,
        drain: bool,
        secure_only: bool,
        offer: &mut dyn FnMut(&[u8]) -> Offer,
    ) -> io::Result<ReadEnd> {
        if self.st.stash_pos < self.st.stash.len() {
            let o = offer(self.st.stash.get(self.st.stash_pos..).unwrap_or_default());
            self.st.stash_pos += o.taken;
            if self.st.stash_pos < self.st.stash.len() {
                return Ok(ReadEnd::Stopped);
            }
            self.st.stash = Vec::new();
            self.st.stash_pos = 0;
            if o.stop {
                return Ok(ReadEnd::Stopped);
            }
        }
        if self.st.eof {
            return Ok(ReadEnd::Closed);
        }
        if self.st.broken {
            return Err(broken());
        }
        GULP_BUF.with(|cell| {
            let Ok(mut g) = cell.try_borrow_mut() else {
                return Err(io::Error::other("TLS read re-entered"));
            };
            let end = self.st.left.len().min(g.len());
            if let Some(head) = g.get_mut(..end) {
                head.copy_from_slice(self.st.left.get(..end).unwrap_or_default());
            }
            self.st.left.clear();
            let r = self.gulps(&mut g, end, budget, drain, secure_only, offer);
            if r.is_err() {
                self.st.broken = true;
                self.st.left = Vec::new();
            }
            let _ = self.push();
            r
        })
    }

    /// The read loop over the gulp buffer `g`, which holds `end` bytes of
    /// ciphertext kept from before.
    fn gulps(
        &mut self,
        g: &mut [u8],
        mut end: usize,
        budget: usize,
        drain: bool,
        secure_only: bool,
        offer: &mut dyn FnMut(&[u8]) -> Offer,
    ) -> io::Result<ReadEnd> {
        let mut start = 0;
        let offered = std::cell::Cell::new(0);
        let mut dry = false;
        let mut counted = |p: &[u8]| {
            let o = offer(p);
            offered.set(offered.get() + o.taken);
            o
        };
        loop {
            let pass = self.pass(
                g.get_mut(..end).unwrap_or_default(),
                &mut start,
                &mut Goal::Read,
                &mut counted,
            )?;
            let kept = g.get(start..end).unwrap_or_default();
            let end_now = if pass.halt == Halt::Stopped {
                Some(ReadEnd::Stopped)
            } else if self.st.eof {
                if self.conn.common().is_handshaking() {
                    self.st.early = Vec::new();
                }
                Some(ReadEnd::Closed)
            } else if dry || (secure_only && !self.conn.common().is_handshaking()) {
                Some(ReadEnd::Drained)
            } else if offered.get() >= budget {
                Some(ReadEnd::Budget)
            } else {
                None
            };
            if let Some(e) = end_now {
                self.keep(kept);
                return Ok(e);
            }
            // Room for the next gulp: a record not complete yet moves to the
            // front (a small copy: less than a record).
            if start > 0 {
                g.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            let Some(space) = g.get_mut(end..).filter(|s| !s.is_empty()) else {
                // A record or handshake message larger than any allowed.
                self.st.failure.get_or_insert(TlsFailure::Protocol);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message too large",
                ));
            };
            // What the handshake wants to say goes before we wait for the peer.
            if self.st.out_pos < self.st.out.len() {
                self.push()?;
            }
            let room = space.len();
            match retry(|| self.sock.read(space)) {
                Ok(0) => {
                    // A close without close_notify: an end, as for TCP.
                    self.st.eof = true;
                    if self.conn.common().is_handshaking() {
                        self.st.early = Vec::new();
                    }
                    self.keep(g.get(..end).unwrap_or_default());
                    return Ok(ReadEnd::Closed);
                }
                Ok(n) => {
                    end += n;
                    dry = n < room && !drain && cfg!(target_os = "linux");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.keep(g.get(..end).unwrap_or_default());
                    return Ok(ReadEnd::Drained);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Keeps `cipher` for the next read; an idle connection keeps no buffer.
    fn keep(&mut self, cipher: &[u8]) {
        self.st.left.clear();
        if cipher.is_empty() {
            self.st.left = Vec::new();
        } else {
            self.st.left.extend_from_slice(cipher);
        }
    }

    /// Plaintext copied into `buf`: as much as it holds or the socket has.
    #[inline(never)]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        let end = self.read_plain(buf.len(), true, &mut |p| {
            let room = buf.get_mut(filled..).unwrap_or_default();
            let n = p.len().min(room.len());
            if let (Some(to), Some(from)) = (room.get_mut(..n), p.get(..n)) {
                to.copy_from_slice(from);
            }
            filled += n;
            Offer {
                taken: n,
                stop: filled == buf.len(),
            }
        })?;
        match end {
            ReadEnd::Drained if filled == 0 => Err(io::ErrorKind::WouldBlock.into()),
            _ => Ok(filled),
        }
    }

    fn handshake(&mut self) -> io::Result<bool> {
        if self.conn.common().is_handshaking() {
            // Application data that came with the last flight is kept.
            let end = self.read_until(usize::MAX, true, true, &mut |_| Offer {
                taken: 0,
                stop: true,
            })?;
            if end == ReadEnd::Closed && self.conn.common().is_handshaking() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // The last flight (a client's Finished) goes now.
        self.push()?;
        Ok(self.conn.common().is_handshaking())
    }

    #[inline(never)]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.push()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let data = buf.get(..buf.len().min(TLS_BUFFER)).unwrap_or_default();
        SEAL_BUF.with(|cell| {
            let Ok(mut seal) = cell.try_borrow_mut() else {
                return Err(io::Error::other("TLS write re-entered"));
            };
            let done = match self.pass_left(&mut Goal::Write {
                data,
                seal: &mut seal[..],
            }) {
                Ok(done) => done,
                Err(e) => {
                    // A record left unread failed: the alert rustls made goes.
                    let _ = self.push();
                    return Err(e);
                }
            };
            let sealed = seal.get(..done.sealed).unwrap_or_default();
            if self.push()? {
                let mut pos = 0;
                while pos < sealed.len() {
                    match retry(|| self.sock.write(sealed.get(pos..).unwrap_or_default())) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => pos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                self.st
                    .out
                    .extend_from_slice(sealed.get(pos..).unwrap_or_default());
            } else {
                self.st.out.extend_from_slice(sealed);
            }
            if done.taken == 0 && !data.is_empty() {
                // Held back: a handshake that has not finished holds all it may.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(done.taken)
        })
    }

    // Out of line, like the rest of TLS: the plaintext path that shares
    // these calls stays small enough to be inlined.
    #[inline(never)]
    fn has_buffered(&self) -> bool {
        self.st.out_pos < self.st.out.len() || self.early_sendable()
    }

    /// Plaintext written before the handshake allowed it, and the handshake
    /// is done. Until then it goes only if the handshake finishes, which a
    /// read drives: a connection closed meanwhile (refused while its
    /// handshake was under way) does not wait for it.
    fn early_sendable(&self) -> bool {
        !self.st.early.is_empty() && !self.conn.common().is_handshaking()
    }

    /// Sends the records the socket did not take, and plaintext written
    /// before the handshake allowed it once it does: true when none waits.
    #[inline(never)]
    fn flush(&mut self) -> io::Result<bool> {
        if self.early_sendable() {
            self.pass_left(&mut Goal::Write {
                data: &[],
                seal: &mut [],
            })?;
        }
        Ok(self.push()? && !self.early_sendable())
    }

    /// Writes queued records until none is left (`true`) or the socket is
    /// full (`false`).
    fn push(&mut self) -> io::Result<bool> {
        let st = &mut self.st;
        while st.out_pos < st.out.len() {
            match retry(|| {
                self.sock
                    .write(st.out.get(st.out_pos..).unwrap_or_default())
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => st.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        st.out.clear();
        st.out_pos = 0;
        if st.out.capacity() > OUT_KEEP {
            st.out = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::{client_config, server_config, server_name, Identity, Trust};
    use crate::net::{Consumed, Flush, IoCounts, Keep, Link};
    use std::time::{Duration, Instant};

    const KEEP: Keep = Keep {
        carry: 1024,
        out: 0,
    };

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    /// A loopback TCP pair, both ends non-blocking.
    fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        c.set_nonblocking(true).unwrap();
        (TcpStream::from_std(s), TcpStream::from_std(c))
    }

    /// A TLS server link over `s` (a self-signed certificate), handshake
    /// not started.
    fn tls_server_link(s: TcpStream) -> Link {
        let sc = server_config(&Identity::SelfSigned("localhost")).unwrap();
        Link::new(
            Transport::tls_server(s, UnbufferedServerConnection::new(sc).unwrap()),
            KEEP,
        )
    }

    /// A server link and a client link over TLS, handshake not started.
    fn tls_pair() -> (Link, Link) {
        let (s, c) = tcp_pair();
        let cc = client_config(&Trust::Anyone, true).unwrap();
        let client =
            UnbufferedClientConnection::new(cc, server_name("localhost").unwrap()).unwrap();
        (
            tls_server_link(s),
            Link::new(Transport::tls_client(c, client), KEEP),
        )
    }

    fn handshake(server: &mut Link, client: &mut Link) {
        let until = deadline();
        while server.transport().handshaking() || client.transport().handshaking() {
            assert!(Instant::now() < until, "handshake did not finish");
            client.transport_mut().handshake().unwrap();
            server.transport_mut().handshake().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Consumes whole lines only, as a session does; stops after `stop_after`
    /// lines when given.
    fn lines(
        got: &mut Vec<u8>,
        stop_after: Option<usize>,
    ) -> impl FnMut(&[u8], &mut Vec<u8>) -> Consumed + '_ {
        let mut seen = 0;
        move |input, _| {
            let mut used = 0;
            while let Some(i) = input[used..].iter().position(|b| *b == b'\n') {
                used += i + 1;
                seen += 1;
                if stop_after.is_some_and(|n| seen >= n) {
                    got.extend_from_slice(&input[..used]);
                    return Consumed { used, stop: true };
                }
            }
            got.extend_from_slice(&input[..used]);
            Consumed { used, stop: false }
        }
    }

    /// Reads whole lines from `link` until `n` bytes came.
    fn read_lines(link: &mut Link, n: usize) -> Vec<u8> {
        let mut io = IoCounts::default();
        let mut scratch = vec![0u8; 4096];
        let mut got = Vec::new();
        let until = deadline();
        while got.len() < n {
            assert!(Instant::now() < until, "only {got:?}");
            link.read_with(
                &mut scratch,
                usize::MAX,
                false,
                &mut io,
                lines(&mut got, None),
            );
        }
        got
    }

    /// Lines of every length from 1 to 3,000 bytes, `total` bytes or a
    /// little more: record boundaries fall anywhere in them.
    fn text(total: usize) -> Vec<u8> {
        let mut t = Vec::with_capacity(total + 4000);
        let mut n = 0usize;
        while t.len() < total {
            n += 1;
            let len = 1 + (n * 7919) % 3000;
            t.extend((0..len).map(|i| b"abcdefghijklmnopqrstuvwxyz"[(n + i) % 26]));
            t.extend_from_slice(b"\r\n");
        }
        t
    }

    /// Sends `data` from `from` while `to` reads it line by line with a
    /// 64 KiB scratch buffer; returns what `to` got.
    fn transfer(from: &mut Link, to: &mut Link, data: &[u8]) -> Vec<u8> {
        let mut io = IoCounts::default();
        let mut scratch = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        let mut sent = from.send(data, &mut io);
        let until = deadline();
        while got.len() < data.len() {
            assert!(
                Instant::now() < until,
                "only {} of {} bytes",
                got.len(),
                data.len()
            );
            if sent == Flush::Blocked {
                sent = from.flush(&mut io);
            }
            assert_ne!(sent, Flush::Failed);
            to.read_with(
                &mut scratch,
                usize::MAX,
                false,
                &mut io,
                lines(&mut got, None),
            );
        }
        got
    }

    #[test]
    fn megabytes_pass_byte_exact_both_ways_with_records_splitting_lines() {
        let (mut server, mut client) = tls_pair();
        handshake(&mut server, &mut client);
        let up = text(3 << 20);
        assert_eq!(transfer(&mut client, &mut server, &up), up);
        let down = text(1 << 20);
        assert_eq!(transfer(&mut server, &mut client, &down), down);
        assert_eq!(server.carried(), 0);
        assert_eq!(server.transport().tls_failure(), None);
    }

    #[test]
    fn plaintext_written_before_the_handshake_arrives_after_it_in_order() {
        let (mut server, mut client) = tls_pair();
        let mut io = IoCounts::default();
        // A greeting written at accept time: nothing can be encrypted yet.
        // It is held, but not counted as pending: it goes only if the
        // handshake finishes, and a connection closed meanwhile does not
        // wait for it.
        assert_eq!(server.send(b"220 first\r\n", &mut io), Flush::Done);
        assert_eq!(server.pending(), 0);
        handshake(&mut server, &mut client);
        assert_eq!(server.send(b"250 second\r\n", &mut io), Flush::Done);
        assert_eq!(server.pending(), 0);
        assert_eq!(read_lines(&mut client, 23), b"220 first\r\n250 second\r\n");
    }

    #[test]
    fn a_reply_written_while_records_wait_unread_keeps_them_in_order() {
        let (mut server, mut client) = tls_pair();
        handshake(&mut server, &mut client);
        let mut io = IoCounts::default();
        // Many records' worth of commands, so that a reader that stops
        // after the first line leaves whole records unprocessed.
        let commands = text(200 * 1024);
        assert_ne!(client.send(&commands, &mut io), Flush::Failed);
        let mut scratch = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        let until = deadline();
        while got.is_empty() {
            assert!(Instant::now() < until);
            let _ = client.flush(&mut io);
            server.read_with(
                &mut scratch,
                usize::MAX,
                false,
                &mut io,
                lines(&mut got, Some(1)),
            );
        }
        // The reply makes rustls process the records left: their plaintext
        // must come next, before anything read later.
        assert_eq!(server.send(b"250 ok\r\n", &mut io), Flush::Done);
        let mut rest = Vec::new();
        let stopped = server.replay(lines(&mut rest, None));
        assert!(!stopped);
        while got.len() + rest.len() < commands.len() {
            assert!(Instant::now() < until);
            let _ = client.flush(&mut io);
            server.read_with(
                &mut scratch,
                usize::MAX,
                false,
                &mut io,
                lines(&mut rest, None),
            );
        }
        got.extend_from_slice(&rest);
        assert_eq!(got, commands);
        assert_eq!(read_lines(&mut client, 8), b"250 ok\r\n");
    }

    #[test]
    fn close_notify_ends_the_stream_after_the_data_before_it() {
        let (mut server, mut client) = tls_pair();
        handshake(&mut server, &mut client);
        let mut io = IoCounts::default();
        assert_eq!(client.send(b"QUIT\r\n", &mut io), Flush::Done);
        client.shutdown_write();
        let mut scratch = vec![0u8; 4096];
        let mut got = Vec::new();
        let until = deadline();
        let end = loop {
            assert!(Instant::now() < until);
            let end = server.read_with(
                &mut scratch,
                usize::MAX,
                false,
                &mut io,
                lines(&mut got, None),
            );
            if end == ReadEnd::Closed {
                break end;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(end, ReadEnd::Closed);
        assert_eq!(got, b"QUIT\r\n");
        assert_eq!(server.transport().tls_failure(), None);
    }

    #[test]
    fn garbage_fails_as_not_tls_and_every_later_call_is_an_error_not_a_panic() {
        let (s, mut c) = tcp_pair();
        let mut server = tls_server_link(s);
        // A plaintext client on a TLS port, then half a record header.
        c.write_all(b"EHLO client.example\r\n\x16\x03").unwrap();
        let mut io = IoCounts::default();
        let mut scratch = vec![0u8; 4096];
        let mut got = Vec::new();
        let until = deadline();
        while server.transport().tls_failure().is_none() {
            assert!(Instant::now() < until);
            let end = server.read_with(
                &mut scratch,
                usize::MAX,
                false,
                &mut io,
                lines(&mut got, None),
            );
            assert!(matches!(end, ReadEnd::Drained | ReadEnd::Closed));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(server.transport().tls_failure(), Some(TlsFailure::NotTls));
        assert!(got.is_empty());
        for _ in 0..3 {
            let end = server.read_with(
                &mut scratch,
                usize::MAX,
                false,
                &mut io,
                lines(&mut got, None),
            );
            assert_eq!(end, ReadEnd::Closed);
            assert!(server.transport_mut().write(b"x").is_err());
            assert!(server.transport_mut().flush_buffered().is_err() || server.pending() == 0);
        }
        server.shutdown_write();
        // The peer got an alert record (content type 21), then FIN.
        let mut alert = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            assert!(Instant::now() < until);
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => alert.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(alert.first(), Some(&21), "{alert:?}");
    }

    #[test]
    fn a_client_trickling_its_handshake_and_records_in_odd_pieces_is_read_exactly() {
        // The client's bytes reach the server in pieces of 1 to 700 bytes,
        // each followed by a read: handshake messages and records are split
        // everywhere, so the ciphertext kept between reads is always a
        // piece of something.
        let (s, mut c) = tcp_pair();
        let mut server = tls_server_link(s);
        let cc = client_config(&Trust::Anyone, false).unwrap();
        let mut client =
            rustls::ClientConnection::new(cc, server_name("localhost").unwrap()).unwrap();
        client.set_buffer_limit(None);
        let data = text(100 * 1024);
        client.writer().write_all(&data).unwrap();
        let mut io = IoCounts::default();
        let mut scratch = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        let mut wire = Vec::new();
        let mut from_server = [0u8; 16 * 1024];
        let mut seed = 7u32;
        let until = deadline();
        while got.len() < data.len() {
            assert!(
                Instant::now() < until,
                "only {} of {} bytes",
                got.len(),
                data.len()
            );
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            if !wire.is_empty() {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let n = (1 + (seed >> 16) as usize % 700).min(wire.len());
                c.write_all(&wire[..n]).unwrap();
                wire.drain(..n);
            }
            let end = server.read_with(
                &mut scratch,
                usize::MAX,
                true,
                &mut io,
                lines(&mut got, None),
            );
            assert!(matches!(end, ReadEnd::Drained | ReadEnd::Budget), "{end:?}");
            match c.read(&mut from_server) {
                Ok(n) => {
                    client.read_tls(&mut &from_server[..n]).unwrap();
                    client.process_new_packets().unwrap();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, data);
        assert_eq!(server.transport().tls_failure(), None);
    }

    #[test]
    fn the_budget_ends_a_read_with_more_waiting() {
        let (mut server, mut client) = tls_pair();
        handshake(&mut server, &mut client);
        let mut io = IoCounts::default();
        let data = text(256 * 1024);
        let mut sent = client.send(&data, &mut io);
        let mut scratch = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        let until = deadline();
        let mut budgeted = false;
        while got.len() < data.len() {
            assert!(Instant::now() < until);
            if sent == Flush::Blocked {
                sent = client.flush(&mut io);
            }
            let end = server.read_with(&mut scratch, 20_000, true, &mut io, lines(&mut got, None));
            budgeted |= end == ReadEnd::Budget;
        }
        assert!(budgeted);
        assert_eq!(got, data);
    }
}
