//! Shared by the integration tests: a server on an ephemeral loopback port
//! and a raw client that reads whole replies with a deadline.
// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

pub mod metrics;

use smtpsink::config::Config;
use smtpsink::reactor::{Background, Report, Server, ShutdownHandle};
use smtpsink::sink::Discard;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct Running {
    pub addr: SocketAddr,
    pub handle: ShutdownHandle,
    server: Background<Discard>,
}

pub fn start_with(tune: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.hostname = "sink.test".into();
    tune(&mut config);
    let mut server = Server::from_config(&config, Discard::default()).expect("bind");
    let seed = config.seed.unwrap_or(1);
    server.set_rules(config.engine(seed).expect("rules"), seed);
    let server = server.spawn();
    Running {
        addr: server.addrs[0],
        handle: server.handle.clone(),
        server,
    }
}

pub fn start() -> Running {
    start_with(|_| {})
}

impl Running {
    pub fn stop(self) -> Report<Discard> {
        self.server.stop().expect("run")
    }

    pub fn join(self) -> Report<Discard> {
        self.server.join().expect("run")
    }
}

/// A raw client: writes bytes, reads whole replies with a deadline.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects from `source` (any 127.0.0.0/8 address works on Linux's
    /// loopback), so tests can be several clients.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Self {
        Self::over(tuned_stream(addr, |s| {
            s.bind(&SocketAddr::new(source, 0).into())
        }))
    }

    /// Connects with a small receive buffer, so what the client does not read
    /// backs up into the server quickly instead of into the kernel.
    pub fn connect_small_window(addr: SocketAddr) -> Self {
        Self::over(small_window_stream(addr))
    }

    fn over(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads everything until the server closes; the bytes as text.
    pub fn read_to_close(&mut self) -> String {
        let mut all = std::mem::take(&mut self.buf);
        self.stream.read_to_end(&mut all).expect("read until close");
        String::from_utf8_lossy(&all).into_owned()
    }

    /// Connects and checks the greeting.
    pub fn greeted(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr);
        assert_eq!(c.replies(1), "220 sink.test ESMTP smtpsink\r\n");
        c
    }

    /// Writes `bytes` from another thread, so the test can read replies
    /// while a burst larger than the socket buffers is still going out. The
    /// server may close before taking all of it; that is not an error here.
    pub fn send_in_background(&self, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
        let mut writer = self.stream.try_clone().expect("clone socket");
        std::thread::spawn(move || {
            let _ = writer.write_all(&bytes);
        })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads until `n` complete replies (multi-line replies count once) have
    /// arrived and returns exactly their text.
    pub fn replies(&mut self, n: usize) -> String {
        let mut chunk = vec![0u8; 65536];
        loop {
            if let Some(end) = reply_boundary(&self.buf, n) {
                let text: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8(text).expect("utf-8 replies");
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "closed early; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) => panic!("read: {e}; have {:?}", String::from_utf8_lossy(&self.buf)),
            }
        }
    }

    pub fn send_expect(&mut self, bytes: &str, want: &str) {
        self.send(bytes.as_bytes());
        let n = want
            .split_terminator("\r\n")
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .count();
        assert_eq!(self.replies(n), want, "after sending {bytes:?}");
    }

    /// Asserts the server closes the connection with nothing more to say.
    pub fn expect_closed(&mut self) {
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(k) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..k])
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected close, got {e}"),
        }
    }
}

/// A connection set up through socket2 (`tune` runs before the connect).
pub fn tuned_stream(
    addr: SocketAddr,
    tune: impl FnOnce(&socket2::Socket) -> std::io::Result<()>,
) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    tune(&s).expect("socket option");
    s.connect(&addr.into()).expect("connect");
    s.into()
}

/// A connection with a 2 KiB receive buffer.
pub fn small_window_stream(addr: SocketAddr) -> TcpStream {
    tuned_stream(addr, |s| s.set_recv_buffer_size(2048))
}

/// Offset just past the `n`th complete reply in `buf`, if all are there.
pub fn reply_boundary(buf: &[u8], n: usize) -> Option<usize> {
    let mut pos = 0;
    let mut done = 0;
    while done < n {
        let lf = buf[pos..].iter().position(|b| *b == b'\n')?;
        let line = &buf[pos..=(pos + lf)];
        pos += lf + 1;
        if line.get(3) != Some(&b'-') {
            done += 1;
        }
    }
    Some(pos)
}

/// The EHLO block of a server with the default configuration (STARTTLS
/// offered, AUTH only after it).
pub const EHLO: &str = "250-sink.test\r\n250-PIPELINING\r\n250-SIZE 67108864\r\n250-8BITMIME\r\n\
250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250-DSN\r\n250-HELP\r\n\
250 STARTTLS\r\n";

/// A Maildir in `dir` for host `sink.test`: no fsync, no cap, the default
/// queue limit.
pub fn maildir_options(dir: &std::path::Path) -> smtpsink::sink::maildir::MaildirOptions {
    smtpsink::sink::maildir::MaildirOptions {
        dir: dir.to_path_buf(),
        fsync: false,
        hostname: "sink.test".into(),
        max_stored: None,
        queue_limit: smtpsink::sink::maildir::QUEUE_LIMIT,
    }
}

/// The `smtpsink` binary started by a test: its child (stopped only by its
/// own PID) and the stderr lines it printed up to "listening on".
pub struct Proc {
    pub child: std::process::Child,
    pub said: Vec<String>,
    stderr: Option<std::io::BufReader<std::process::ChildStderr>>,
}

impl Proc {
    /// Starts `smtpsink ARGS` (with `--hostname sink.test`) and reads its
    /// stderr until it listens.
    pub fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smtpsink"))
            .args(args)
            .args(["--hostname", "sink.test"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn smtpsink");
        let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let mut said = Vec::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.kill();
                panic!("smtpsink exited before listening: {said:?}");
            }
            let done = line.starts_with("smtpsink: listening on ");
            said.push(line);
            if done {
                break;
            }
        }
        Self {
            child,
            said,
            stderr: Some(stderr),
        }
    }

    /// The first address of the "listening on" line.
    pub fn addr(&self) -> SocketAddr {
        let line = self.said.last().expect("a line");
        line["smtpsink: listening on ".len()..]
            .split([',', ' '])
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// The control endpoint's address, from its start-up line.
    pub fn control(&self) -> SocketAddr {
        self.said
            .iter()
            .find_map(|l| l.strip_prefix("smtpsink: control endpoint on http://"))
            .and_then(|r| r.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no control endpoint in {:?}", self.said))
    }

    /// SIGTERM (by PID), then [`wait_exit`].
    pub fn terminate(mut self) -> (i32, String, String) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.stderr = self.stderr.take().map(std::io::BufReader::into_inner);
        wait_exit(self.child)
    }
}

/// Waits for a child with a deadline (killing it, by its own PID, if late):
/// exit code, stdout, stderr.
pub fn wait_exit(mut child: std::process::Child) -> (i32, String, String) {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut out = String::new();
            let mut err = String::new();
            child.stdout.take().map(|mut s| s.read_to_string(&mut out));
            child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            return (status.code().unwrap_or(-1), out, err);
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("smtpsink did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The number after `name` on its line of a final report.
pub fn report_field(out: &str, name: &str) -> u64 {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(name))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}
