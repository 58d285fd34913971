//! The `smtpload` binary as a user meets it: exit codes, error lines, the
//! JSON report, the histogram log and `merge`.

mod common;

use common::{fake_server, Script, Sink};
use std::net::TcpListener;
use std::process::{Command, Output};

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
        "Examples:",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
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
    assert!(v["throughput"]["messages_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["errors"].as_array().unwrap().len(), 0);

    let text = String::from_utf8(std::fs::read(&log).unwrap()).unwrap();
    assert!(
        text.contains("#[StartTime: ") && text.contains("Tag=message,"),
        "{text}"
    );
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
