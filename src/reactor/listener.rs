//! Listening sockets, tuned with socket2 before mio takes them over.
//!
//! TCP: `SO_REUSEADDR` so a restart does not wait out `TIME_WAIT`;
//! `IPV6_V6ONLY` so `[::]:P` and `0.0.0.0:P` can both be bound; with several
//! loops (`--threads`) `SO_REUSEPORT`, so each loop has its own socket on
//! the address and the kernel spreads connections over them. UNIX-domain
//! sockets: a stale socket file (nobody accepts on it) is replaced; a live
//! one or any other file is left alone and refused; ours is removed when
//! the listener is dropped. Errors name the address and say what went wrong
//! in plain words.

use crate::config::ListenOn;
use crate::net::Stream;
use mio::event::Source;
use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A listener that could not be set up.
#[derive(Debug)]
pub struct ListenError {
    /// The address that could not be listened on.
    pub addr: ListenOn,
    /// Why.
    pub source: io::Error,
}

impl ListenError {
    /// `source` while setting up the TCP listener on `addr`.
    pub fn tcp(addr: SocketAddr, source: io::Error) -> Self {
        Self {
            addr: ListenOn::Tcp(addr),
            source,
        }
    }
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

/// Binds and listens on `addr`, non-blocking; `reuse_port` for a socket
/// that shares the address with other loops' sockets.
pub fn bind(addr: SocketAddr, backlog: i32, reuse_port: bool) -> Result<TcpListener, ListenError> {
    let setup = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        Ok(TcpListener::from_std(socket.into()))
    };
    setup().map_err(|source| ListenError::tcp(addr, source))
}

/// Fails as a plain bind would if something listens on `addr` already.
/// With `SO_REUSEPORT` on our sockets, another process of the same user
/// that also sets it (a second `smtpsink --threads`) could otherwise
/// join our group and take a share of the connections without an error;
/// a probe without the option cannot. Port 0 is always free.
pub fn check_free(addr: SocketAddr) -> Result<(), ListenError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = || -> io::Result<()> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())
    };
    probe().map_err(|source| ListenError::tcp(addr, source))
}

/// A UNIX-domain listener; its socket file goes when it is dropped.
#[derive(Debug)]
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixSocket {
    /// The path it listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on the UNIX-domain socket `path`, non-blocking, with `mode` if
/// given. A socket file nobody accepts on (a crash left it) is replaced;
/// a live one is "address already in use"; another kind of file is refused
/// and kept.
pub fn bind_unix(path: &Path, backlog: i32, mode: Option<u32>) -> Result<UnixSocket, ListenError> {
    let setup = || -> io::Result<UnixSocket> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => return Err(io::ErrorKind::AddrInUse.into()),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::fs::remove_file(path)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket (left as it is)",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SockAddr::unix(path)?)?;
        // From here on the file is ours: remove it if anything else fails.
        let std_listener: std::os::unix::net::UnixListener = socket.into();
        let ours = UnixSocket {
            listener: UnixListener::from_std(std_listener),
            path: path.to_path_buf(),
        };
        if let Some(mode) = mode {
            // Before listen(): nobody can connect while the mode is wider.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        socket2::SockRef::from(&ours.listener).listen(backlog)?;
        Ok(ours)
    };
    setup().map_err(|source| ListenError {
        addr: ListenOn::Unix(path.to_path_buf()),
        source,
    })
}

/// A listening socket of either kind.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// UNIX-domain.
    Unix(UnixSocket),
}

/// The address a UNIX-domain client gets: it has no IP, so sessions, trace
/// headers, rules and per-client limits see the unspecified 0.0.0.0:0.
pub const UNIX_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl Listener {
    /// The next connection and its peer's address.
    pub fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        match self {
            // `into`: Nagle off, as for every TCP stream.
            Listener::Tcp(l) => l.accept().map(|(s, a)| (s.into(), a)),
            Listener::Unix(u) => u
                .listener
                .accept()
                .map(|(s, _)| (Stream::Unix(s), UNIX_PEER)),
        }
    }
}

impl Source for Listener {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(r, t, i),
            Listener::Unix(u) => u.listener.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.reregister(r, t, i),
            Listener::Unix(u) => u.listener.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.deregister(r),
            Listener::Unix(u) => u.listener.deregister(r),
        }
    }
}
