//! Listening sockets, tuned with socket2 before mio takes them over.
//!
//! `SO_REUSEADDR` so a restart does not wait out `TIME_WAIT`; `IPV6_V6ONLY` so
//! `[::]:P` and `0.0.0.0:P` can both be bound; the backlog is ours to set.
//! Errors name the address and say what went wrong in plain words.

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::io;
use std::net::SocketAddr;

/// A listener that could not be set up.
#[derive(Debug)]
pub struct ListenError {
    /// The address that could not be listened on.
    pub addr: SocketAddr,
    /// Why.
    pub source: io::Error,
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = crate::net::plain_error(&self.source);
        write!(f, "cannot listen on {}: {why}", self.addr)
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Binds and listens on `addr`, non-blocking.
pub fn bind(addr: SocketAddr, backlog: i32) -> Result<TcpListener, ListenError> {
    let setup = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        Ok(TcpListener::from_std(socket.into()))
    };
    setup().map_err(|source| ListenError { addr, source })
}
