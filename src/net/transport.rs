//! The byte stream under a connection: the seam where TLS will go.
//!
//! Plain TCP is the only variant today. A TLS variant (STARTTLS switches a
//! connection to it mid-stream; implicit TLS starts with it) reads and writes
//! plaintext through the same calls, so neither the buffers nor the protocol
//! above change. Retries EINTR; every other error goes to the caller.

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;

/// A connection's byte stream.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
}

impl Transport {
    /// A TCP stream; small writes leave at once (Nagle would hold replies
    /// and pipelined commands).
    pub fn tcp(sock: TcpStream) -> Self {
        let _ = sock.set_nodelay(true);
        Transport::Plain(sock)
    }

    /// Reads what is there, retrying EINTR.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        retry(|| match self {
            Transport::Plain(s) => s.read(buf),
        })
    }

    /// Writes what the stream takes, retrying EINTR.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        retry(|| match self {
            Transport::Plain(s) => s.write(buf),
        })
    }

    /// Sends FIN after whatever output is queued.
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    /// The peer's address; an error while a connect is still in progress.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Plain(s) => s.peer_addr(),
        }
    }

    /// The pending socket error (how a non-blocking connect failed).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Transport::Plain(s) => s.take_error(),
        }
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
        match self {
            Transport::Plain(s) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.deregister(r),
        }
    }
}
