//! The Maildir sink against the real reactor: what is stored is the
//! message exactly as the client meant it, with trace fields prepended
//! only; what was not acknowledged leaves nothing behind.

mod common;

use common::{Client, DEADLINE};
use smtpsink::config::Config;
use smtpsink::reactor::{Background, Report, Server};
use smtpsink::sink::maildir::MaildirOptions;
use smtpsink::sink::Maildir;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct Store {
    dir: PathBuf,
    addr: std::net::SocketAddr,
    server: Background<Maildir>,
}

fn start(name: &str, fsync: bool, tune: impl FnOnce(&mut Config)) -> Store {
    start_in(&fresh(name), fsync, None, tune)
}

/// An empty directory for test `name`.
fn fresh(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smtpsink-maildir-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start_in(
    dir: &Path,
    fsync: bool,
    max_stored: Option<u64>,
    tune: impl FnOnce(&mut Config),
) -> Store {
    start_limited(
        dir,
        fsync,
        max_stored,
        smtpsink::sink::maildir::QUEUE_LIMIT,
        tune,
    )
}

fn start_limited(
    dir: &Path,
    fsync: bool,
    max_stored: Option<u64>,
    queue_limit: u64,
    tune: impl FnOnce(&mut Config),
) -> Store {
    let dir = dir.to_path_buf();
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.hostname = "sink.test".into();
    tune(&mut config);
    let opts = MaildirOptions {
        dir: dir.clone(),
        fsync,
        hostname: "sink.test".into(),
        max_stored,
        queue_limit,
    };
    Maildir::prepare(&opts).expect("prepare");
    let mut server = Server::from_config_with(&config, |c| Maildir::start(opts, &c)).expect("bind");
    server.set_rules(config.engine(1).expect("rules"), 1);
    let server = server.spawn();
    Store {
        dir,
        addr: server.addrs[0],
        server,
    }
}

impl Store {
    fn files(&self, sub: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// Waits (bounded) until `tmp/` is empty: aborts are the workers' job.
    fn tmp_empties(&self) {
        let t0 = Instant::now();
        while !self.files("tmp").is_empty() {
            assert!(
                t0.elapsed() < DEADLINE,
                "tmp/ keeps {:?}",
                self.files("tmp")
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn stop(self) -> (PathBuf, Report<Maildir>) {
        let r = self.server.stop().expect("run");
        (self.dir, r)
    }
}

/// Splits a stored file into its trace fields and the message.
fn split(file: &[u8]) -> (String, Vec<u8>) {
    let mut at = 0;
    for line in file.split_inclusive(|b| *b == b'\n') {
        let trace = [
            &b"Return-Path: "[..],
            b"X-Original-To: ",
            b"Received: ",
            b"\t",
        ]
        .iter()
        .any(|p| line.starts_with(p));
        if !trace {
            break;
        }
        at += line.len();
    }
    (
        String::from_utf8(file[..at].to_vec()).unwrap(),
        file[at..].to_vec(),
    )
}

fn stored(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| split(&std::fs::read(p).unwrap()))
        .collect()
}

/// The stored message whose trace fields mention `sender`.
fn from<'a>(files: &'a [(String, Vec<u8>)], sender: &str) -> &'a (String, Vec<u8>) {
    files
        .iter()
        .find(|(t, _)| t.contains(sender))
        .unwrap_or_else(|| panic!("no message from {sender}"))
}

const EHLO_N: usize = 1;

fn hello(c: &mut Client) {
    c.send(b"EHLO client.example\r\n");
    c.replies(EHLO_N);
}

#[test]
fn data_is_stored_unstuffed_and_byte_exact_with_trace_fields_prepended() {
    let s = start("data", false, |_| {});
    let mut c = Client::greeted(s.addr);
    hello(&mut c);
    // Dot-led lines, a line that is only a dot, 8-bit bytes, a bare CR,
    // and a body that is empty apart from its headers.
    let message: &[u8] =
        b"Subject: dots\r\n\r\n.leading\r\n.\r\n..two\r\nStra\xc3\x9fe \xff\x00\r\nbare\rCR\r\n";
    let mut wire = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".to_vec();
    smtpsink::proto::dot::stuff(message, &mut wire);
    c.send(&wire);
    let r = c.replies(4);
    assert!(r.ends_with("250 2.0.0 Ok: queued\r\n"), "{r}");
    c.send(b"MAIL FROM:<>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n.\r\n");
    let r = c.replies(4);
    assert!(r.ends_with("250 2.0.0 Ok: queued\r\n"), "{r}");
    c.send(b"QUIT\r\n");
    c.replies(1);
    let (dir, report) = s.stop();
    let files = stored(&dir);
    assert_eq!(files.len(), 2);
    let first = from(&files, "<a@x.test>");
    assert_eq!(first.1, message);
    let t = &first.0;
    assert!(t.starts_with("Return-Path: <a@x.test>\r\nX-Original-To: <b@y.test>\r\nReceived: from client.example ([127.0.0.1])\r\n\tby sink.test (smtpsink) with ESMTP id "), "{t}");
    assert!(t.contains("\r\n\tfor <b@y.test>; "), "{t}");
    assert!(t.ends_with(" +0000\r\n"), "{t}");
    let empty = files
        .iter()
        .find(|(t, _)| t.starts_with("Return-Path: <>"))
        .unwrap();
    assert_eq!(empty.1, b"", "an empty message stays empty");
    assert_eq!(report.sink.stats.stored.load(Ordering::Relaxed), 2);
    assert!(std::fs::read_dir(dir.join("tmp")).unwrap().next().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bdat_is_stored_verbatim_pipelined_with_many_recipients_and_megabytes() {
    let s = start("bdat", false, |c| c.max_message_size = 16 << 20);
    let mut c = Client::greeted(s.addr);
    hello(&mut c);
    // A chunk that contains what would end DATA, then a 3 MB chunk.
    let small: &[u8] = b"Subject: b\r\n\r\nline\r\n.\r\nafter the dot\r\n";
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = b"MAIL FROM:<a@x.test>\r\n".to_vec();
    let rcpts = 100;
    for i in 0..rcpts {
        wire.extend_from_slice(format!("RCPT TO:<r{i}@y.test>\r\n").as_bytes());
    }
    wire.extend_from_slice(format!("BDAT {} LAST\r\n", small.len()).as_bytes());
    wire.extend_from_slice(small);
    wire.extend_from_slice(b"MAIL FROM:<big@x.test>\r\nRCPT TO:<z@y.test>\r\n");
    wire.extend_from_slice(format!("BDAT {}\r\n", big.len() / 2).as_bytes());
    wire.extend_from_slice(&big[..big.len() / 2]);
    wire.extend_from_slice(format!("BDAT {} LAST\r\n", big.len() - big.len() / 2).as_bytes());
    wire.extend_from_slice(&big[big.len() / 2..]);
    let writer = c.send_in_background(wire);
    let r = c.replies(1 + rcpts + 1 + 2 + 2);
    writer.join().unwrap();
    assert_eq!(r.matches("Ok: queued").count(), 2, "{r}");
    let (dir, report) = s.stop();
    let files = stored(&dir);
    assert_eq!(files.len(), 2);
    let first = from(&files, "<a@x.test>");
    assert_eq!(first.1, small);
    assert_eq!(first.0.matches("X-Original-To: <r").count(), rcpts);
    assert!(
        !first.0.contains("\tfor <"),
        "no 'for' with many recipients"
    );
    let second = from(&files, "<big@x.test>");
    assert!(second.1 == big, "3 MB stored byte-exact");
    assert_eq!(report.sink.stats.stored.load(Ordering::Relaxed), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_was_not_acknowledged_leaves_nothing() {
    let s = start("faults", false, |c| c.max_message_size = 1000);
    // Disconnect mid-DATA and mid-BDAT.
    for mid in [
        &b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: x\r\n\r\nhalf"[..],
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 100 LAST\r\nonly part",
    ] {
        let mut c = Client::greeted(s.addr);
        hello(&mut c);
        c.send(mid);
        c.replies(2);
        drop(c);
    }
    let mut c = Client::greeted(s.addr);
    hello(&mut c);
    // Over the size limit: 552, nothing kept.
    let mut wire = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".to_vec();
    wire.extend_from_slice(&vec![b'x'; 2000]);
    wire.extend_from_slice(b"\r\n.\r\n");
    c.send(&wire);
    let r = c.replies(4);
    assert!(
        r.ends_with("552 5.3.4 Error: message size exceeds fixed limit\r\n"),
        "{r}"
    );
    // RSET in the middle of a BDAT transaction: abandoned.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 5\r\nhello");
    c.replies(3);
    c.send(b"RSET\r\n");
    c.replies(1);
    // A rejected transaction (no recipient) never opens a file.
    c.send(b"MAIL FROM:<a@x.test>\r\nDATA\r\n");
    let r = c.replies(2);
    assert!(r.contains("503 5.5.1"), "{r}");
    s.tmp_empties();
    assert!(s.files("new").is_empty(), "{:?}", s.files("new"));
    // And the server still stores the next good message.
    c.send(b"RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nok\r\n.\r\n");
    let r = c.replies(5);
    assert!(r.ends_with("250 2.0.0 Ok: queued\r\n"), "{r}");
    let (dir, report) = s.stop();
    assert_eq!(stored(&dir).len(), 1);
    assert_eq!(report.sink.stats.errors.load(Ordering::Relaxed), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fsync_mode_commits_in_groups() {
    let s = start("fsync", true, |_| {});
    let n = 8;
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let mut c = Client::greeted(addr);
                hello(&mut c);
                for k in 0..5 {
                    c.send(format!("MAIL FROM:<c{i}@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: {k}\r\n\r\nbody {i} {k}\r\n.\r\n").as_bytes());
                    let r = c.replies(4);
                    assert!(r.ends_with("250 2.0.0 Ok: queued\r\n"), "{r}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (dir, report) = s.stop();
    assert_eq!(stored(&dir).len(), n * 5);
    let st = &report.sink.stats;
    let (stored_n, batches, in_batches) = (
        st.stored.load(Ordering::Relaxed),
        st.batches.load(Ordering::Relaxed),
        st.batched.load(Ordering::Relaxed),
    );
    assert_eq!((stored_n, in_batches), (40, 40));
    assert!((1..=40).contains(&batches), "{batches}");
    assert_eq!(st.latency().len(), 40);
    assert!(smtpsink::sink::Summary::summary(&report.sink).contains("fsync batches"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// One DATA transaction of `body` (no dot-led lines); the reply text.
fn send_message(c: &mut Client, body: &[u8]) -> String {
    let mut wire = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".to_vec();
    wire.extend_from_slice(body);
    wire.extend_from_slice(b".\r\n");
    c.send(&wire);
    c.replies(4)
}

#[test]
fn a_full_disk_answers_452_leaves_nothing_partial_and_recovers() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("smtpsink-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let opts = common::maildir_options(&dir.join("md"));
    Maildir::prepare(&opts).expect("prepare");
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.hostname = "sink.test".into();
    let server = Server::from_config_with(&config, |c| Maildir::start(opts, &c))
        .expect("bind")
        .spawn();
    let body: Vec<u8> = b"Subject: big\r\n\r\n"
        .iter()
        .copied()
        .chain((0..600_000).map(|i| if i % 100 == 99 { b'\n' } else { b'a' }))
        .collect::<Vec<u8>>()
        .split(|b| *b == b'\n')
        .flat_map(|l| l.iter().copied().chain(*b"\r\n"))
        .collect();
    let mut c = Client::greeted(server.addrs[0]);
    hello(&mut c);
    let r = send_message(&mut c, &body);
    assert!(r.ends_with("250 2.0.0 Ok: queued\r\n"), "{r}");
    let r = send_message(&mut c, &body);
    assert!(
        r.ends_with("452 4.3.1 Error: insufficient system storage\r\n"),
        "{r}"
    );
    let md = dir.join("md");
    let t0 = Instant::now();
    while std::fs::read_dir(md.join("tmp")).unwrap().next().is_some() {
        assert!(t0.elapsed() < DEADLINE, "a partial file stays in tmp/");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let new: Vec<_> = std::fs::read_dir(md.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(new.len(), 1);
    // Space comes back: the server stores again, by itself.
    std::fs::remove_file(&new[0]).unwrap();
    let r = send_message(&mut c, &body);
    assert!(r.ends_with("250 2.0.0 Ok: queued\r\n"), "{r}");
    let report = server.stop().expect("run");
    assert_eq!(report.sink.stats.errors.load(Ordering::Relaxed), 1);
    let _ = std::process::Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unusable_maildir_is_a_one_line_startup_error() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_smtpsink"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--maildir",
            "/proc/no-such-maildir",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "smtpsink: cannot use maildir /proc/no-such-maildir: cannot create /proc/no-such-maildir/tmp: no such file or directory\n"
    );
}

/// The message client `t` sends as its `k`th.
fn crash_body(t: usize, k: usize) -> String {
    format!(
        "Subject: {t}-{k}\r\nX-Test-Id: {t}-{k}\r\n\r\n{}\r\n",
        "z".repeat(50 * k + 10)
    )
}

/// Sends messages lock-step until the server goes away, recording each
/// one whose 250 arrived.
fn keep_sending(addr: std::net::SocketAddr, t: usize, acked: &Mutex<Vec<String>>) -> Option<()> {
    let stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).ok()?;
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut w = stream;
    let mut line = String::new();
    let mut reply = |r: &mut BufReader<TcpStream>| -> Option<String> {
        loop {
            line.clear();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.as_bytes().get(3) == Some(&b' ') {
                return Some(line.clone());
            }
        }
    };
    reply(&mut r)?;
    w.write_all(b"EHLO c.test\r\n").ok()?;
    reply(&mut r)?;
    for k in 0.. {
        let msg = crash_body(t, k);
        let wire = format!("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n{msg}.\r\n");
        w.write_all(wire.as_bytes()).ok()?;
        for _ in 0..3 {
            reply(&mut r)?;
        }
        if reply(&mut r)?.starts_with("250") {
            acked.lock().ok()?.push(msg);
        }
    }
    Some(())
}

#[test]
fn after_sigkill_every_acknowledged_message_is_whole_in_new() {
    let dir = std::env::temp_dir().join(format!("smtpsink-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_smtpsink"))
        .args(["--listen", "127.0.0.1:0", "--fsync", "--maildir"])
        .arg(&dir)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr: std::net::SocketAddr = first
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let acked = Arc::clone(&acked);
            std::thread::spawn(move || keep_sending(addr, t, &acked))
        })
        .collect();
    // Let some messages through, then kill the server mid-run.
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < 40 {
        assert!(t0.elapsed() < DEADLINE, "too slow to start");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    for c in clients {
        let _ = c.join();
    }
    let acked = acked.lock().unwrap().clone();
    let in_new: HashSet<Vec<u8>> = stored(&dir).into_iter().map(|(_, m)| m).collect();
    for m in &acked {
        assert!(
            in_new.contains(m.as_bytes()),
            "acknowledged but not whole in new/: {}",
            &m[..30]
        );
    }
    for m in &in_new {
        let text = String::from_utf8_lossy(m);
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Test-Id: "))
            .expect("an id");
        let (t, k) = id.split_once('-').unwrap();
        let want = crash_body(t.parse().unwrap(), k.parse().unwrap());
        assert_eq!(m, want.as_bytes(), "partial file in new/");
    }
    assert!(acked.len() >= 40);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn max_stored_keeps_the_newest_and_stale_tmp_files_go_at_start() {
    let dir = fresh("cap");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    // A message from an earlier run (the oldest), a tmp/ file left 40
    // hours ago by a crash, and one a live writer may still be writing.
    std::fs::write(dir.join("new/1000.M1P1Q1.old"), b"old\r\n").unwrap();
    let stale = dir.join("tmp/1000.M2P1Q2.old");
    let f = std::fs::File::create(&stale).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(40 * 3600))
        .unwrap();
    std::fs::write(dir.join("tmp/9999999999.M1P1Q1.live"), b"x").unwrap();
    let s = start_in(&dir, false, Some(3), |_| {});
    assert!(!stale.exists(), "a tmp/ file older than 36 h is removed");
    assert!(dir.join("tmp/9999999999.M1P1Q1.live").exists());
    let mut c = Client::greeted(s.addr);
    hello(&mut c);
    for k in 0..5 {
        let r = send_message(
            &mut c,
            format!("Subject: {k}\r\n\r\nbody {k}\r\n").as_bytes(),
        );
        assert!(r.ends_with("250 2.0.0 Ok: queued\r\n"), "{r}");
    }
    let (dir, report) = s.stop();
    let kept: Vec<Vec<u8>> = stored(&dir).into_iter().map(|(_, m)| m).collect();
    let mut subjects: Vec<String> = kept
        .iter()
        .map(|m| String::from_utf8_lossy(&m[..10]).into_owned())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["Subject: 2", "Subject: 3", "Subject: 4"]);
    assert_eq!(report.sink.stats.pruned.load(Ordering::Relaxed), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_storage_queue_pauses_reading_and_loses_nothing() {
    // A queue limit of one piece: nearly every piece written stalls the
    // loop until a worker has written it. Eight clients, 1 MB each, must
    // all be stored whole (no lost wake-up, no stuck connection).
    let s = start_limited(&fresh("pressure"), false, None, 64 * 1024, |c| {
        c.max_message_size = 4 << 20;
    });
    let body: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let clients: Vec<_> = (0..8)
        .map(|k| {
            let (addr, body) = (s.addr, body.clone());
            std::thread::spawn(move || {
                let mut c = Client::greeted(addr);
                hello(&mut c);
                let mut wire = format!(
                    "MAIL FROM:<c{k}@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT {} LAST\r\n",
                    body.len()
                )
                .into_bytes();
                wire.extend_from_slice(&body);
                let w = c.send_in_background(wire);
                let r = c.replies(3);
                w.join().unwrap();
                assert!(r.ends_with("250 2.0.0 Ok: queued\r\n"), "{r}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (dir, report) = s.stop();
    let files = stored(&dir);
    assert_eq!(files.len(), 8);
    assert!(files.iter().all(|(_, m)| *m == body));
    let st = &report.sink.stats;
    assert_eq!(st.queued.load(Ordering::Relaxed), 0);
    assert!(
        st.stalls.load(Ordering::Relaxed) > 0,
        "the limit was reached"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// LMTP: rules refuse one recipient at the end of the data; the stored
/// message names only the recipients it was delivered to, with LMTP.
#[test]
fn lmtp_keeps_only_the_recipients_it_answered_250() {
    let rules = fresh("lmtp-rules");
    std::fs::create_dir_all(&rules).unwrap();
    let file = rules.join("rules.toml");
    std::fs::write(
        &file,
        "[[rule]]\nstage = \"end\"\naddress = \"gone@*\"\nreply = \"550 5.1.1 No such user\"\n",
    )
    .unwrap();
    let s = start("lmtp", false, |c| {
        c.lmtp = true;
        c.rules = Some(file.clone());
    });
    let mut c = Client::connect(s.addr);
    assert_eq!(c.replies(1), "220 sink.test LMTP smtpsink\r\n");
    c.send(b"LHLO client.example\r\n");
    c.replies(1);
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<ok@y.test>\r\nRCPT TO:<gone@y.test>\r\nRCPT TO:<ok2@y.test>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n");
    let r = c.replies(8);
    assert!(
        r.ends_with(
            "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued\r\n\
550 5.1.1 No such user\r\n250 2.0.0 Ok: queued\r\n"
        ),
        "{r}"
    );
    c.send(b"QUIT\r\n");
    c.replies(1);
    let (dir, _) = s.stop();
    let files = stored(&dir);
    assert_eq!(files.len(), 1);
    let t = &files[0].0;
    assert!(
        t.starts_with("Return-Path: <a@x.test>\r\nX-Original-To: <ok@y.test>\r\nX-Original-To: <ok2@y.test>\r\nReceived: from client.example ([127.0.0.1])\r\n\tby sink.test (smtpsink) with LMTP id "),
        "{t}"
    );
    assert_eq!(files[0].1, b"Subject: t\r\n\r\nhi\r\n");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&rules);
}

/// XFORWARD from a trusted client names the original client in the trace
/// header of the next message only.
#[test]
fn xforward_names_the_original_client_of_the_next_message() {
    let s = start("xforward", false, |c| c.xforward = true);
    let mut c = Client::greeted(s.addr);
    c.send(b"EHLO filter.example\r\n");
    let ehlo = c.replies(1);
    assert!(
        ehlo.contains("250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE\r\n"),
        "{ehlo}"
    );
    let msg = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhi\r\n.\r\n";
    c.send(b"XFORWARD NAME=mx.example ADDR=IPV6:2001:db8::9 HELO=orig.example\r\n");
    assert_eq!(c.replies(1), "250 2.0.0 Ok\r\n");
    c.send(msg);
    c.replies(4);
    c.send(msg);
    c.replies(4);
    c.send(b"QUIT\r\n");
    c.replies(1);
    let (dir, _) = s.stop();
    let mut traces: Vec<String> = stored(&dir)
        .into_iter()
        .map(|(t, _)| t.lines().nth(2).unwrap().to_string())
        .collect();
    traces.sort();
    assert_eq!(
        traces,
        [
            "Received: from filter.example ([127.0.0.1])",
            "Received: from orig.example (mx.example [IPv6:2001:db8::9])"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
