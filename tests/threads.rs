//! `smtpsink --threads 2`: two event loops on `SO_REUSEPORT` sockets, as a
//! user runs it. Exact totals from real connections in the final report, in
//! `--json`, in `/metrics` scraped while it runs; both loops took
//! connections; `PUT /rules` reaches both; a duplicate that arrives once in
//! each loop counts as one (the verify sink's sets are merged, not added),
//! and the run summary stops the sink only when the union is complete.

mod common;

use common::metrics::Metrics;
use common::{report_field, wait_exit, Proc, DEADLINE};
use smtpsink::run_summary::RunSummary;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// Connections and messages per connection of the load.
const CONNS: u64 = 40;
const PER: u64 = 5;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smtpsink-threads-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One pipelined session of `bodies` (each a whole message) to `rcpt`, then
/// QUIT; every reply, up to the close.
fn session(mut s: impl Read + Write, rcpt: &str, bodies: &[Vec<u8>]) -> String {
    let mut out = b"EHLO c\r\n".to_vec();
    for b in bodies {
        out.extend_from_slice(
            format!("MAIL FROM:<a@b.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes(),
        );
        out.extend_from_slice(b);
        out.extend_from_slice(b".\r\n");
    }
    out.extend_from_slice(b"QUIT\r\n");
    s.write_all(&out).unwrap();
    let mut replies = String::new();
    s.read_to_string(&mut replies).unwrap();
    replies
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

fn queued(replies: &str) -> u64 {
    replies.matches("250 2.0.0 Ok: queued\r\n").count() as u64
}

/// `/metrics`, parsed.
fn metrics(ctl: SocketAddr) -> Metrics {
    let text = ureq::get(format!("http://{ctl}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    Metrics::parse(&text)
}

/// `PUT /rules` with one rule refusing `deny@*`; then a session per
/// connection to it: every one refused, whichever loop took it.
fn deny_everywhere(addr: SocketAddr, ctl: SocketAddr) {
    let rules = "[[rule]]\nname = \"deny\"\nstage = \"rcpt\"\naddress = \"deny@*\"\nreply = \"550 5.1.1 No such user\"\n";
    let r = ureq::put(format!("http://{ctl}/rules"))
        .send(rules)
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..CONNS {
        let mut s = tcp(addr);
        s.write_all(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<deny@d.test>\r\nQUIT\r\n")
            .unwrap();
        let mut replies = String::new();
        s.read_to_string(&mut replies).unwrap();
        assert!(
            replies.contains("\r\n550 5.1.1 No such user\r\n"),
            "{replies}"
        );
    }
    assert_eq!(
        metrics(ctl).n(r#"smtpsink_rule_hits_total{rule="deny"}"#),
        CONNS
    );
}

#[test]
fn two_loops_count_exactly_and_both_take_connections() {
    let tmp = dir("count");
    let sock = tmp.join("s");
    let json = tmp.join("report.json");
    let sink = Proc::start(&[
        "--threads",
        "2",
        "-l",
        "127.0.0.1:0",
        "-l",
        &format!("unix:{}", sock.display()),
        "--control",
        "127.0.0.1:0",
        "--json",
        json.to_str().unwrap(),
        "--stats-interval",
        "1",
    ]);
    assert!(
        sink.said.last().unwrap().contains(", 2 event loops)"),
        "{:?}",
        sink.said
    );
    let (addr, ctl) = (sink.addr(), sink.control());
    let body = b"Subject: t\r\n\r\nhello\r\n".to_vec();
    let bodies: Vec<Vec<u8>> = (0..PER).map(|_| body.clone()).collect();
    for _ in 0..CONNS {
        assert_eq!(queued(&session(tcp(addr), "c@d.test", &bodies)), PER);
    }
    // Loop 0 owns the UNIX listener: one more message that way.
    let local = UnixStream::connect(&sock).unwrap();
    local.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(
        queued(&session(local, "c@d.test", std::slice::from_ref(&body))),
        1
    );

    // Every reply was read, so both loops counted everything already.
    let m = metrics(ctl);
    assert_eq!(m.n("smtpsink_connections_total"), CONNS + 1);
    assert_eq!(
        m.n(r#"smtpsink_messages_total{outcome="accepted"}"#),
        CONNS * PER + 1
    );
    assert_eq!(m.n("smtpsink_recipients_total"), CONNS * PER + 1);
    assert_eq!(m.histogram_count(), CONNS * PER + 1);
    let per_loop = m.by_label("smtpsink_loop_connections_total");
    let (l0, l1) = (per_loop["0"], per_loop["1"]);
    assert_eq!((per_loop.len(), l0 + l1), (2, CONNS + 1));
    // 40 connections hashed over two sockets all to one: 2^-39.
    assert!(
        l0 > 1 && l1 > 0,
        "one loop took every connection: {l0} {l1}"
    );

    // New rules reach both loops before the 200.
    deny_everywhere(addr, ctl);

    // At least one interval line comes after the traffic.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (code, out, err) = sink.terminate();
    assert_eq!(code, 0, "{err}");
    let last = err.lines().rfind(|l| l.starts_with("smtpsink: t="));
    let last = last.unwrap_or_else(|| panic!("no interval line in {err}"));
    assert!(last.contains(" conns=0 msgs=201 "), "{last}");
    assert!(
        last.contains(" rcpts=201 ") && last.contains(" 4xx=0 5xx=40 "),
        "{last}"
    );
    let total = 2 * CONNS + 1;
    assert_eq!(report_field(&out, "connections"), total);
    assert_eq!(report_field(&out, "messages"), CONNS * PER + 1);
    assert_eq!(report_field(&out, "recipients"), CONNS * PER + 1);
    let loops: Vec<u64> = out
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("loops"))
        .unwrap_or_else(|| panic!("no loops line in {out}"))
        .split_whitespace()
        .map_while(|n| n.parse().ok())
        .collect();
    assert_eq!(
        (loops.len(), loops.iter().sum::<u64>()),
        (2, total),
        "{out}"
    );
    assert!(
        out.contains("  rule deny                         40 hits\n"),
        "{out}"
    );
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["counters"]["messages"], CONNS * PER + 1);
    assert_eq!(
        j["loops"][0]["connections"].as_u64().unwrap()
            + j["loops"][1]["connections"].as_u64().unwrap(),
        total
    );
    assert!(!sock.exists(), "the UNIX socket file is removed at exit");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A message smtpload would send: run, sequence number, CRC-32 of the body.
fn tracked(run: u64, seq: u64) -> Vec<u8> {
    let body = format!("message {seq}\r\n");
    format!(
        "X-Smtpload-Run: {run:016x}\r\nX-Smtpload-Seq: {seq:020}\r\nX-Smtpload-Hash: crc32:{:08x}\r\n\r\n{body}",
        crc32fast::hash(body.as_bytes())
    )
    .into_bytes()
}

#[test]
fn verify_merges_sequence_sets_across_loops() {
    let d = dir("verify");
    let summary = d.join("summary.json");
    let sink = Proc::start(&[
        "--threads",
        "2",
        "-l",
        "127.0.0.1:0",
        "--run-summary",
        summary.to_str().unwrap(),
        "--linger",
        "10",
    ]);
    let addr = sink.addr();
    let run = 0xfeed;
    // Each of 20 messages twice, one per connection: over two loops both
    // copies of some land in different loops, which only a merge of the
    // sequence sets counts as duplicates.
    for seq in (0..20).chain(0..20) {
        assert_eq!(
            queued(&session(tcp(addr), "c@d.test", &[tracked(run, seq)])),
            1
        );
    }
    // Acknowledged: 0..=20, and 20 never came, so the run is not complete
    // until 20 arrives; then the sink stops by itself.
    let s = RunSummary {
        run,
        started_unix: 0.0,
        ended_unix: 0.0,
        failed: 0,
        acked: vec![(0, 20)],
    };
    std::fs::write(&summary, s.to_json()).unwrap();
    // The sink reads it within 100 ms; were it to stop now, the next
    // connection would be refused.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        queued(&session(tcp(addr), "c@d.test", &[tracked(run, 20)])),
        1
    );
    let Proc { child, .. } = sink;
    let (code, out, err) = wait_exit(child);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("  verify         intact=41 corrupted=0 duplicated=20 lost=0 in_flight=0 unverifiable=0\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "  run {run:016x} acknowledged=21 delivered=21 missing=0 (complete)"
        )),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// `smtpsink --threads 2` on `addr` exits 1 with one line, printing nothing.
fn refused_with_two_loops(addr: std::net::SocketAddr) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_smtpsink"))
        .args(["--threads", "2", "--listen", &addr.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out, err) = wait_exit(child);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!("smtpsink: cannot listen on {addr}: address already in use\n")
    );
}

#[test]
fn a_taken_port_is_one_clear_line_with_two_loops() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    refused_with_two_loops(addr);
}

#[test]
fn a_second_server_cannot_join_the_loops_port_group() {
    let first = Proc::start(&["--threads", "2", "-l", "127.0.0.1:0"]);
    let addr = first.addr();
    refused_with_two_loops(addr);
    let (code, _, err) = first.terminate();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn sigterm_lets_a_message_in_progress_finish_in_any_loop() {
    let sink = Proc::start(&["--threads", "2", "-l", "127.0.0.1:0"]);
    let mut c = tcp(sink.addr());
    c.write_all(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nfirst half\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("354 ") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    let pid = sink.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(kill.unwrap().success());
    // The idle loop ends at once; the busy one must keep its grace period
    // (not be stopped outright when the reporting side sees the first end).
    std::thread::sleep(std::time::Duration::from_millis(400));
    c.write_all(b"second half\r\n.\r\n").unwrap();
    let mut rest = String::new();
    c.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("250 2.0.0 Ok: queued\r\n"), "{rest}");
    let Proc { child, .. } = sink;
    let (code, out, err) = wait_exit(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report_field(&out, "messages"), 1);
}
