//! Memory bounds of the real binary under hostile and bursty clients,
//! measured from /proc (Linux only): the server runs as a child process so
//! nothing else in the test process blurs its figures.
//!
//! - Clients that pipeline 64 KiB of `EHLO` (about 1.2 MB of replies each)
//!   and never read: the server stops answering at its output high-water
//!   mark, so each holds at most ~64 KiB of output plus one read buffer of
//!   unanswered input (README: "Bounds").
//! - Connections that had a burst and are now idle hold no buffers.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_smtpsink");

/// The server under test; killed (by its own PID) when dropped.
struct Sink {
    child: Child,
    addr: SocketAddr,
}

impl Sink {
    fn start() -> Self {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--max-connections", "2000"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn smtpsink");
        let mut first = String::new();
        BufReader::new(child.stderr.take().expect("stderr"))
            .read_line(&mut first)
            .expect("first line");
        let addr = first
            .strip_prefix("smtpsink: listening on ")
            .and_then(|r| r.strip_suffix(" (discarding mail, STARTTLS, AUTH)\n"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let s = Self { child, addr };
        s.settle();
        s
    }

    /// A field of /proc/PID/status, in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// CPU time used so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // After the ")" closing the command name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    /// Waits until the server has done all it can: its CPU time stands still
    /// for 300 ms (bounded at 20 s).
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = self.cpu_ticks();
        let mut still = 0;
        while still < 6 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.cpu_ticks();
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
    }

    /// A plain client still gets answered.
    fn check_alive(&self) {
        let mut c = TcpStream::connect(self.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"NOOP\r\nQUIT\r\n").unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        assert!(
            all.ends_with("250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"),
            "{all:?}"
        );
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client socket with a small receive buffer, so what it does not read
/// backs up into the server quickly instead of into the kernel.
fn small_window_client(addr: SocketAddr) -> TcpStream {
    let s = common::small_window_stream(addr);
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn clients_that_never_read_hold_bounded_memory() {
    const CLIENTS: u64 = 200;
    let sink = Sink::start();
    let base = sink.status_kib("VmHWM");
    let flood = b"EHLO x\r\n".repeat(64 * 1024 / 8);
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut c = small_window_client(sink.addr);
            c.write_all(&flood).unwrap();
            c
        })
        .collect();
    sink.settle();
    let peak = sink.status_kib("VmHWM") - base;
    sink.check_alive();
    eprintln!("peak RSS growth with {CLIENTS} non-reading clients: {peak} KiB");
    // ~64 KiB of output and up to 64 KiB of input each, plus the loop's
    // shared buffers; answering everything would hold ~1.2 MB each.
    assert!(
        peak < CLIENTS * 192,
        "{peak} KiB for {CLIENTS} clients: {} KiB each",
        peak / CLIENTS
    );
    drop(clients);
}

#[test]
fn clients_that_flood_until_every_buffer_is_full_hold_bounded_memory() {
    // Here the kernel's socket buffers fill up on both sides, so what is
    // left is held by the server itself: its per-connection bound.
    const CLIENTS: u64 = 16;
    let sink = Sink::start();
    let base = sink.status_kib("VmHWM");
    let flood = b"EHLO x\r\n".repeat(8 * 1024);
    let mut clients: Vec<(TcpStream, usize)> = (0..CLIENTS)
        .map(|_| {
            let c = small_window_client(sink.addr);
            c.set_nonblocking(true).unwrap();
            (c, 0)
        })
        .collect();
    // Write until the server stops taking input from anyone (each client
    // offered at most 64 MiB, about 1.2 GB of replies).
    for _round in 0..50 {
        let mut progress = false;
        for (c, sent) in &mut clients {
            while *sent < 64 << 20 {
                match c.write(&flood) {
                    Ok(n) => {
                        *sent += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
        }
        sink.settle();
        if !progress {
            break;
        }
    }
    let peak = sink.status_kib("VmHWM") - base;
    sink.check_alive();
    let sent: usize = clients.iter().map(|(_, s)| s).sum();
    eprintln!(
        "peak RSS growth with {CLIENTS} saturated clients: {peak} KiB ({} KiB offered each)",
        sent / 1024 / usize::try_from(CLIENTS).unwrap()
    );
    assert!(
        peak < CLIENTS * 192 + 512,
        "{peak} KiB for {CLIENTS} clients: {} KiB each",
        peak / CLIENTS
    );
    drop(clients);
}

#[test]
fn idle_connections_give_their_buffers_back_after_a_burst() {
    const CLIENTS: usize = 200;
    let sink = Sink::start();
    let base = sink.status_kib("VmRSS");
    let burst = b"NOOP\r\n".repeat(64 * 1024 / 6);
    let want = "250 2.0.0 Ok\r\n".len() * (64 * 1024 / 6);
    let mut idle = Vec::new();
    for batch in 0..CLIENTS / 10 {
        let mut clients: Vec<TcpStream> = (0..10)
            .map(|_| {
                let c = TcpStream::connect(sink.addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                c
            })
            .collect();
        // In 4 KiB pieces, so replies pile up across several reads.
        for c in &mut clients {
            for piece in burst.chunks(4096) {
                c.write_all(piece).unwrap();
            }
        }
        for c in &mut clients {
            let mut got = 0;
            let mut buf = vec![0u8; 64 * 1024];
            // The greeting, then every reply.
            while got < want + "220 localhost ESMTP smtpsink\r\n".len() {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "closed early in batch {batch}");
                got += n;
            }
        }
        idle.extend(clients);
    }
    sink.settle();
    let growth = sink.status_kib("VmRSS").saturating_sub(base);
    sink.check_alive();
    eprintln!("RSS growth with {CLIENTS} idle connections after bursts: {growth} KiB");
    // Connection state is a few hundred bytes; a kept 16-64 KiB output or
    // input buffer per connection would be 3-12 MB here.
    assert!(growth < 1024, "{growth} KiB for {CLIENTS} idle connections");
    drop(idle);
}
