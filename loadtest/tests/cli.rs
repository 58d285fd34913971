//! The `smtpload` binary as a user meets it: exit codes, error lines, the
//! report, the JSON report, the histogram log and `merge`; and with the
//! `smtpsink` binary, the end-to-end workflow through a lossy relay.

mod common;

use common::{fake_server, started_of_schedule, Faults, Script, Sink};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_smtpload");

fn smtpload(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run smtpload")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn dead_port_says_so_and_exits_1() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = format!("127.0.0.1:{port}");
    let o = smtpload(&["-q", "-c", "3", "-m", "10", &target]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("smtpload: cannot connect to {target}: connection refused\n")
    );
}

#[test]
fn start_at_in_the_past_a_bind_address_of_the_other_family_and_a_backward_range_are_one_line() {
    let addr = fake_server(Script::FinalCode(250));
    let target = addr.to_string();
    let past = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 30;
    let o = smtpload(&["-q", "-m", "1", "--start-at", &past.to_string(), &target]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("smtpload: the start time passed 3") && err.ends_with(" s ago\n"),
        "{err}"
    );
    let o = smtpload(&["-q", "-m", "1", "--per-connection", "5-2", &target]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("5-2: a range is N-M with 1 <= N <= M"),
        "{}",
        stderr(&o)
    );
    let o = smtpload(&["-q", "-m", "1", "--bind", "192.0.2.1", &target]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "smtpload: --bind 192.0.2.1: address not available on this host\n"
    );
    let o = smtpload(&["-q", "-m", "1", "--bind", "::1", &target]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("smtpload: --bind ::1: not the address family of {target}\n")
    );
}

/// Runs smtpload under `sh -c 'ulimit ...; exec smtpload ARGS'`.
fn smtpload_with_ulimit(ulimit: &str, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .output()
        .expect("run sh")
}

#[test]
fn the_open_files_limit_is_raised_for_the_connections_or_the_run_refused() {
    let sink = Sink::start();
    let target = sink.addr.to_string();
    // Soft limit 64, hard limit as it is: raised to what 300 connections need.
    let o = smtpload_with_ulimit("-Sn 64", &["-q", "-c", "300", "-m", "600", &target]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("over 300 connections"),
        "{}",
        stdout(&o)
    );
    // Hard limit 256: 300 connections cannot be held, nothing is run.
    let o = smtpload_with_ulimit("-n 256", &["-q", "-c", "300", "-m", "600", &target]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "smtpload: -c 300 needs 364 open files; the limit is 256 (ulimit -Hn)\n"
    );
    let report = sink.stop();
    assert_eq!(report.stats.counters.messages, 600);
}

#[test]
fn usage_errors_exit_2() {
    let o = smtpload(&["127.0.0.1:2525"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "neither --messages nor --duration"
    );
    assert!(stderr(&o).contains("--messages"), "{}", stderr(&o));
    let o = smtpload(&["-m", "1"]);
    assert_eq!(o.status.code(), Some(2), "no target");
    let help = smtpload(&["--help"]);
    let text = stdout(&help);
    for flag in [
        "--connections",
        "--messages",
        "--duration",
        "--size",
        "--recipients",
        "--per-connection",
        "--no-pipelining",
        "--bdat",
        "--window",
        "--rate",
        "--json",
        "--hist-log",
        "--summary",
        "--chunk-size",
        "Examples:",
        "Sender; {seq} becomes the message's sequence number",
        "Recipient; {seq} is the sequence number, {r} the recipient's index",
        "envelope   MAIL -> 354 (DATA), or -> the last RCPT reply (BDAT)",
        "message-uncorrected  open loop only",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    let o = smtpload(&["-m", "1", "--chunk-size", "100", "127.0.0.1:2525"]);
    assert_eq!(o.status.code(), Some(2), "--chunk-size needs --bdat");
}

#[test]
fn bdat_is_a_flag_and_the_report_says_what_kind_of_run_it_was() {
    let sink = Sink::start();
    let target = sink.addr.to_string();
    // The target right after --bdat is the target, not a chunk size.
    let o = smtpload(&["-q", "-c", "3", "-m", "30", "--bdat", &target]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.starts_with(
            "smtpload: closed loop, pipelined BDAT, window 1, 3 connections, 30 messages of 1024 bytes\n"
        ),
        "{text}"
    );
    let o = smtpload(&[
        "-q",
        "-c",
        "2",
        "-m",
        "30",
        "--bdat",
        "--chunk-size",
        "100",
        "--no-pipelining",
        &target,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("closed loop, lock-step BDAT, 2 connections"),
        "{text}"
    );
    assert!(text.contains("30 accepted, 0 failed"), "{text}");
    assert!(text.contains(" min "), "a min column: {text}");
    let o = smtpload(&["-q", "-c", "2", "-d", "0.5", "--rate", "40", &target]);
    let text = stdout(&o);
    assert!(
        text.starts_with(
            "smtpload: open loop at 40 msg/s requested, pipelined DATA, 2 connections, 0.5s of"
        ),
        "{text}"
    );
    assert!(text.contains("schedule   requested 40.0 msg/s"), "{text}");
    // Due is the schedule's; what started of it depends on this process
    // getting the CPU on time, so it is checked as accounting.
    let started = started_of_schedule(&text, 20);
    let report = sink.stop();
    assert_eq!(report.sink.intact, 60 + started);
}

#[test]
fn errors_past_max_errors_exit_1() {
    let addr = fake_server(Script::FinalCode(451)).to_string();
    let o = smtpload(&["-q", "-c", "2", "-m", "50", "--max-errors", "5", &addr]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("end-of-data  451"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("aborted    too many errors"),
        "{}",
        stdout(&o)
    );
    // Without a limit the same errors are reported but not fatal.
    let o = smtpload(&["-q", "-c", "2", "-m", "10", &addr]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("0 accepted, 10 failed"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn json_report_hist_log_and_merge() {
    let sink = Sink::start();
    let dir = std::env::temp_dir().join(format!("smtpload-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, log) = (dir.join("run.json"), dir.join("run.hlog"));
    let target = sink.addr.to_string();
    let o = smtpload(&[
        "-q",
        "-c",
        "4",
        "-m",
        "300",
        "--bdat",
        "--window",
        "4",
        "--json",
        json.to_str().unwrap(),
        "--hist-log",
        log.to_str().unwrap(),
        &target,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("300 accepted, 0 failed"),
        "{}",
        stdout(&o)
    );
    let report = sink.stop();
    assert_eq!(report.sink.intact, 300);

    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["messages"]["accepted"], 300);
    assert_eq!(v["latency"]["message"]["count"], 300);
    assert!(v["latency"]["message"]["min_us"].as_u64().unwrap() > 0);
    assert!(v["throughput"]["messages_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["errors"].as_array().unwrap().len(), 0);
    assert_eq!(v["run"]["loop"], "closed");
    assert_eq!(v["run"]["mode"], "pipelined BDAT, window 4");
    assert_eq!(v["run"]["connections"], 4);
    assert_eq!(v["run"]["messages_requested"], 300);
    assert_eq!(v["sent"]["messages"], 300);
    assert!(v["sent"]["bytes"].as_u64().unwrap() > 300 * 1024);
    assert!(v["schedule"].is_null());

    // HdrHistogram's own header lines, so its tools read the file.
    let text = String::from_utf8(std::fs::read(&log).unwrap()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], "#[Histogram log format version 1.3]", "{text}");
    assert!(lines[2].starts_with("#[StartTime: "), "{text}");
    assert!(lines[3].starts_with("#[BaseTime: "), "{text}");
    assert_eq!(
        lines[4],
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
    );
    assert!(text.contains("Tag=message,"), "{text}");
    python_hdrh_reads(&log, 300);
    // Two copies of the same log merge to twice the counts.
    let l = log.to_str().unwrap();
    let o = smtpload(&["merge", l, l]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let merged = stdout(&o);
    let line = merged
        .lines()
        .find(|l| l.trim_start().starts_with("message "))
        .unwrap_or_default();
    assert_eq!(line.split_whitespace().nth(1), Some("600"), "{merged}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// When Python's `hdrh` (pip package `hdrhistogram`) is installed, reads the
/// log with its `HistogramLogReader`, as `HdrHistogram`'s users would, and
/// checks the message count. Without it, the header check above stands.
fn python_hdrh_reads(log: &Path, messages: u64) {
    python_hdrh_reads_tag(log, "message", messages);
}

fn python_hdrh_reads_tag(log: &Path, tag: &str, messages: u64) {
    let probe = Command::new("python3").args(["-c", "import hdrh"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("python3 hdrh not installed: the log was checked line by line only");
        return;
    }
    let script = r"
import sys
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
total = HdrHistogram(1, 3600 * 1000 * 1000, 3)
reader = HistogramLogReader(sys.argv[1], total)
n = 0
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    if h.get_tag() == sys.argv[2]:
        n += h.get_total_count()
print(n)
";
    let o = Command::new("python3")
        .args(["-c", script, log.to_str().unwrap(), tag])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), messages.to_string());
}

/// The smtpsink binary built beside this one (`cargo test --workspace`).
fn smtpsink_bin() -> PathBuf {
    let p = Path::new(BIN).with_file_name("smtpsink");
    assert!(
        p.exists(),
        "{} missing: run cargo test --workspace",
        p.display()
    );
    p
}

#[test]
fn through_a_lossy_relay_the_sink_stops_by_itself_and_counts_the_loss() {
    // The headline workflow: smtpload -> relay -> smtpsink --run-summary.
    // The relay loses the last message: invisible without the summary.
    let dir = std::env::temp_dir().join(format!("smtpload-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (summary, sink_json, transit) = (
        dir.join("run.sum"),
        dir.join("sink.json"),
        dir.join("transit.hlog"),
    );
    let mut sink = Command::new(smtpsink_bin())
        .args(["--listen", "127.0.0.1:0", "--linger", "1", "--run-summary"])
        .arg(&summary)
        .arg("--json")
        .arg(&sink_json)
        .arg("--transit-log")
        .arg(&transit)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(sink.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    let addr: std::net::SocketAddr = first
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    let relay = common::relay(
        addr,
        Faults {
            lose: vec![39],
            delay: Duration::from_millis(100),
            ..Faults::default()
        },
    );
    let o = smtpload(&[
        "-q",
        "-c",
        "2",
        "-m",
        "40",
        "--summary",
        summary.to_str().unwrap(),
        &relay.to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("40 accepted"), "{}", stdout(&o));
    // The sink stops on its own: one linger after the last arrival.
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = sink.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = sink.kill();
            panic!("the sink did not stop by itself");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(rest.contains("40 messages acknowledged"), "{rest}");
    assert!(
        rest.contains("the missing messages count as lost"),
        "{rest}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&sink_json).unwrap()).unwrap();
    let verify = &v["verify"];
    assert_eq!(verify["expected"], 40, "{v}");
    assert_eq!(verify["intact"], 39);
    assert_eq!(verify["lost"], 1);
    assert_eq!(verify["in_flight"], 0);
    assert_eq!(verify["complete"], false);
    assert_eq!(verify["transit"]["count"], 39);
    assert!(verify["transit"]["min_us"].as_u64().unwrap() >= 100_000);
    assert_eq!(v["counters"]["messages"], 39);
    let log = std::fs::read_to_string(&transit).unwrap();
    assert!(log.contains("Tag=transit,"), "{log}");
    python_hdrh_reads_tag(&transit, "transit", 39);
    let _ = std::fs::remove_dir_all(&dir);
}
