//! Micro-benchmarks of the protocol fast paths, each beside a straightforward
//! byte-at-a-time reference kept here as the baseline (`cargo bench`).
//!
//! - framing: finding command lines (memchr) vs a byte loop;
//! - parse: framing plus parsing of a pipelined command batch;
//! - eod: the end-of-data scan in discard mode (nothing copied) vs a byte
//!   state machine, over several body shapes;
//! - unstuff: the same scan storing the unstuffed body (store mode) vs the
//!   byte state machine pushing each byte;
//! - session: a whole in-memory DATA session with the discard sink.
//!
//! Every closure checks its result, so a fast path that got faster by being
//! wrong fails the bench. Throughput is in bytes.
// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use smtpsink::proto::command::{self, ParseCtx};
use smtpsink::proto::dot::{self, Unstuffer};
use smtpsink::proto::line::{self, Frame};
use smtpsink::proto::server::{Ctx, Session, Settings};
use smtpsink::sink::Discard;
use smtpsink::stats::Stats;
use std::hint::black_box;
use std::time::Instant;

const BODY: usize = 1 << 20;

/// Repeats `line` (which ends in CRLF) to about `BODY` bytes.
fn repeat_lines(line: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(BODY + line.len());
    while v.len() < BODY {
        v.extend_from_slice(line);
    }
    v
}

/// Deterministic pseudo-random 8-bit text with a CRLF every 76 bytes.
fn eight_bit() -> Vec<u8> {
    let mut v = Vec::with_capacity(BODY);
    let mut x: u32 = 0x9e37_79b9;
    while v.len() < BODY {
        for _ in 0..76 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.push(0x80 | x.to_le_bytes()[0]);
        }
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// The body shapes, each already dot-stuffed and terminated as on the wire.
fn shapes() -> Vec<(&'static str, Vec<u8>)> {
    let long = {
        let mut l = vec![b'x'; 100_000];
        l.extend_from_slice(b"\r\n");
        repeat_lines(&l)
    };
    let raw = [
        (
            "plain",
            repeat_lines(
                b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\r\n",
            ),
        ),
        (
            "dot-lines",
            repeat_lines(b".Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do\r\n"),
        ),
        ("long-lines", long),
        ("tiny-lines", repeat_lines(b"a\r\n")),
        ("dot-tiny", repeat_lines(b".\r\n")),
        ("8bit", eight_bit()),
    ];
    raw.into_iter()
        .map(|(name, body)| {
            let mut wire = Vec::with_capacity(body.len() * 2);
            dot::stuff(&body, &mut wire);
            (name, wire)
        })
        .collect()
}

/// Reference end-of-data scan: one byte at a time, RFC 5321 4.5.2.
/// Returns (bytes consumed, unstuffed body length); `store` receives bytes.
fn reference_scan(input: &[u8], mut store: impl FnMut(u8)) -> (usize, usize) {
    let mut bol = true;
    let mut body = 0;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if bol && b == b'.' {
            if input.get(i + 1) == Some(&b'\r') && input.get(i + 2) == Some(&b'\n') {
                return (i + 3, body);
            }
            i += 1;
            bol = false;
            continue;
        }
        bol = b == b'\n' && i > 0 && input[i - 1] == b'\r';
        store(b);
        body += 1;
        i += 1;
    }
    (i, body)
}

/// Reference framing: the next line found with a byte loop, one line at a
/// time like `line::next_line`.
fn reference_next_line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            let end = if i > 0 && buf[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            return Some((&buf[..end], i + 1));
        }
        i += 1;
    }
    None
}

fn reference_lines(buf: &[u8]) -> usize {
    let mut rest = buf;
    let mut n = 0;
    while let Some((_, consumed)) = reference_next_line(rest) {
        rest = &rest[consumed..];
        n += 1;
    }
    n
}

fn commands() -> Vec<u8> {
    let batch: &[u8] = b"MAIL FROM:<sender.name@example.test> SIZE=1024 BODY=8BITMIME\r\n\
RCPT TO:<first.rcpt@example.test>\r\nRCPT TO:<second@example.test> NOTIFY=SUCCESS,FAILURE\r\n\
RCPT TO:<\"quoted local\"@[192.0.2.1]>\r\nDATA\r\nRSET\r\nNOOP\r\nEHLO client.example.test\r\n";
    let mut v = Vec::new();
    while v.len() < 64 * 1024 {
        v.extend_from_slice(batch);
    }
    v
}

fn framing(c: &mut Criterion) {
    let buf = commands();
    let want = reference_lines(&buf);
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("memchr", |b| {
        b.iter(|| {
            let mut rest = black_box(&buf[..]);
            let mut n = 0;
            while let Frame::Line { consumed, .. } = line::next_line(rest, 1024) {
                rest = &rest[consumed..];
                n += 1;
            }
            assert_eq!(n, want);
        });
    });
    g.bench_function("reference", |b| {
        b.iter(|| assert_eq!(reference_lines(black_box(&buf)), want));
    });
    g.finish();

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    let ctx = ParseCtx { smtputf8: false };
    g.bench_function("frame+parse", |b| {
        b.iter(|| {
            let mut rest = black_box(&buf[..]);
            let mut ok = 0;
            while let Frame::Line { line, consumed } = line::next_line(rest, 1024) {
                ok += usize::from(command::parse(line, ctx).is_ok());
                rest = &rest[consumed..];
            }
            assert_eq!(ok, want);
        });
    });
    g.finish();
}

fn end_of_data(c: &mut Criterion) {
    for (group, store) in [("eod", false), ("unstuff", true)] {
        let mut g = c.benchmark_group(group);
        for (name, wire) in shapes() {
            let (used, body_len) = reference_scan(&wire, |_| {});
            assert_eq!(used, wire.len());
            g.throughput(Throughput::Bytes(wire.len() as u64));
            g.bench_with_input(BenchmarkId::new("fast", name), &wire, |b, wire| {
                let mut out = Vec::with_capacity(wire.len());
                b.iter(|| {
                    out.clear();
                    let mut n = 0;
                    let s = Unstuffer::new().scan(black_box(wire), |run| {
                        n += run.len();
                        if store {
                            out.extend_from_slice(run);
                        }
                    });
                    assert!(s.end && s.consumed == used && n == body_len);
                });
            });
            g.bench_with_input(BenchmarkId::new("reference", name), &wire, |b, wire| {
                let mut out = Vec::with_capacity(wire.len());
                b.iter(|| {
                    out.clear();
                    let r = if store {
                        reference_scan(black_box(wire), |byte| out.push(byte))
                    } else {
                        reference_scan(black_box(wire), |_| {})
                    };
                    assert_eq!(r, (used, body_len));
                });
            });
        }
        g.finish();
    }
}

fn session(c: &mut Criterion) {
    let s = Settings::new("bench.test", 1 << 30, 1000, 512);
    let mut body = Vec::new();
    dot::stuff(
        &repeat_lines(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusm\r\n")
            [..1024],
        &mut body,
    );
    let mut wire = b"EHLO bench.test\r\n".to_vec();
    for _ in 0..1000 {
        wire.extend_from_slice(
            b"MAIL FROM:<sender@example.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n",
        );
        wire.extend_from_slice(&body);
    }
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("1000 pipelined 1 KiB messages", |b| {
        let mut out = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            let now = Instant::now();
            let mut session = Session::new(1, "127.0.0.1:1".parse().unwrap(), now);
            let mut sink = Discard::default();
            let mut stats = Stats::new();
            out.clear();
            let mut cx = Ctx::new(&mut out, &mut sink, &mut stats, now);
            let used = session.handle_input(&s, black_box(&wire), &mut cx);
            assert_eq!(used, wire.len());
            assert_eq!(sink.messages, 1000);
        });
    });
    g.finish();
}

criterion_group!(benches, framing, end_of_data, session);
criterion_main!(benches);
