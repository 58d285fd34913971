//! tcp_copy: the physical limit for receiving bytes over loopback TCP, for
//! scripts/compare.sh. Standalone, std only; compare.sh builds it with
//! `rustc -O --edition 2021 -o tcp_copy scripts/tcp_copy.rs`.
//!
//!   tcp_copy recv PORT NCONN READY_FILE [BUFSIZE]
//!       Listen on 127.0.0.1:PORT, write READY_FILE once listening, accept
//!       NCONN connections and read each to EOF in its own thread with
//!       blocking reads into a BUFSIZE-byte buffer (default 65536, smtpsink's
//!       read size), discarding the data. Prints "CPU_S BYTES WALL_S": the
//!       process's CPU seconds (user+sys, all threads) and wall seconds from
//!       the last accept to the last EOF, and the bytes read.
//!   tcp_copy send PORT NCONN BYTES_PER_CONN
//!       Open NCONN connections and write BYTES_PER_CONN bytes on each, 1 MiB
//!       a write, a thread per connection; then close them.
//!
//! Both give up after 300 s (exit status 2).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::exit;
use std::thread;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(300);

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;

/// CPU seconds of the whole process (all threads).
fn cpu_s() -> f64 {
    let mut t = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut t) } != 0 {
        return f64::NAN;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("tcp_copy: {what}: {e}");
    exit(1)
}

fn recv(port: u16, nconn: usize, ready: &str, bufsize: usize) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| fail("bind", e));
    std::fs::write(ready, "listening\n").unwrap_or_else(|e| fail("ready file", e));
    let conns: Vec<TcpStream> = (0..nconn)
        .map(|_| listener.accept().unwrap_or_else(|e| fail("accept", e)).0)
        .collect();
    let (c0, t0) = (cpu_s(), Instant::now());
    let threads: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                c.set_read_timeout(Some(LIMIT)).ok();
                let mut buf = vec![0u8; bufsize];
                let mut total = 0u64;
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => return total,
                        Ok(n) => total += n as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => fail("read", e),
                    }
                }
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    println!(
        "{:.4} {} {:.4}",
        cpu_s() - c0,
        total,
        t0.elapsed().as_secs_f64()
    );
}

fn send(port: u16, nconn: usize, per_conn: u64) {
    let threads: Vec<_> = (0..nconn)
        .map(|_| {
            thread::spawn(move || {
                let chunk: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8).collect();
                let mut c =
                    TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| fail("connect", e));
                c.set_write_timeout(Some(LIMIT)).ok();
                let mut left = per_conn;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    c.write_all(&chunk[..n])
                        .unwrap_or_else(|e| fail("write", e));
                    left -= n as u64;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().ok();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: tcp_copy recv PORT NCONN READY_FILE [BUFSIZE] | tcp_copy send PORT NCONN BYTES_PER_CONN");
        exit(64)
    };
    if args.len() < 5 {
        usage();
    }
    let port: u16 = args[2].parse().unwrap_or_else(|_| usage());
    let nconn: usize = args[3].parse().unwrap_or_else(|_| usage());
    thread::spawn(|| {
        thread::sleep(LIMIT);
        eprintln!("tcp_copy: gave up after {} s", LIMIT.as_secs());
        exit(2)
    });
    match args[1].as_str() {
        "recv" => {
            let bufsize = args
                .get(5)
                .map_or(Ok(65536), |s| s.parse())
                .unwrap_or_else(|_| usage());
            recv(port, nconn, &args[4], bufsize)
        }
        "send" => send(port, nconn, args[4].parse().unwrap_or_else(|_| usage())),
        _ => usage(),
    }
}
