//! Many generators, one report: `--threads` inside one process, several
//! processes started together with `--start-at`, and `smtpload merge` of
//! what they wrote. Counts are exact at both ends: in the merged report and
//! at the sink (verified intact, none twice).

mod common;

use common::{started_of_schedule, Sink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_smtpload");

fn smtpload(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run smtpload")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smtpload-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The count of the `message` row of a report's latency table.
fn message_row_count(report: &str) -> Option<u64> {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with("message "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn threads_split_connections_messages_and_rate_exactly() {
    let sink = Sink::start();
    let dir = tmp("threads");
    let (j, log) = (dir.join("run.json"), dir.join("run.hlog"));
    let target = sink.addr.to_string();
    let args = ["-q", "--threads", "3", "-c", "7", "-m", "1000"];
    let out = ok(&smtpload(
        &[
            &args[..],
            &[
                "--json",
                j.to_str().unwrap(),
                "--hist-log",
                log.to_str().unwrap(),
                &target,
            ],
        ]
        .concat(),
    ));
    assert!(out.contains("7 connections, 1000 messages"), "{out}");
    assert!(
        out.contains("1000 accepted, 0 failed, 1000 started"),
        "{out}"
    );
    let v = json(&j);
    assert_eq!(v["run"]["connections"], 7);
    assert_eq!(v["connections"], 7);
    assert_eq!(v["latency"]["message"]["count"], 1000);
    // The lanes' interval lines in one log add up to the run.
    let merged = ok(&smtpload(&["merge", log.to_str().unwrap()]));
    assert_eq!(message_row_count(&merged), Some(1000), "{merged}");
    // Open loop: 400/s for 1 s over three lanes is the one schedule.
    let open = ["-q", "--threads", "3", "-c", "6", "--rate", "400"];
    let out = ok(&smtpload(&[&open[..], &["-d", "1", &target]].concat()));
    assert!(out.contains("requested 400.0 msg/s"), "{out}");
    // The three lanes' schedules add up to exactly the one schedule. What
    // was started of it depends on the lanes getting the CPU on time (a
    // starved lane honestly reports "never started"), so the rest is
    // checked as accounting: due = started + never started, all accepted.
    let started = started_of_schedule(&out, 400);
    // Open loop bounded by a count rather than a time: nothing can be left
    // unstarted, so every message is there however the lanes were run.
    let out = ok(&smtpload(&[&open[..], &["-m", "200", &target]].concat()));
    assert!(out.contains("200 due, 0 never started"), "{out}");
    assert!(out.contains("200 accepted, 0 failed, 200 started"), "{out}");
    let report = sink.stop();
    assert_eq!(
        (
            report.sink.intact,
            report.sink.duplicated,
            report.sink.corrupted
        ),
        (1000 + started + 200, 0, 0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn three_processes_started_together_merge_into_one_report() {
    let sink = Sink::start();
    let dir = tmp("three");
    let target = sink.addr.to_string();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let at = format!("{:.3}", now.as_secs_f64() + 1.5);
    let amounts = [100u64, 150, 250];
    let files = |i: usize| (dir.join(format!("{i}.json")), dir.join(format!("{i}.hlog")));
    let children: Vec<_> = amounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (j, l) = files(i);
            Command::new(BIN)
                .args(["-q", "-c", "3", "-m", &m.to_string(), "--start-at", &at])
                .args([
                    "--json",
                    j.to_str().unwrap(),
                    "--hist-log",
                    l.to_str().unwrap(),
                ])
                .arg(&target)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start smtpload")
        })
        .collect();
    for c in children {
        ok(&c.wait_with_output().expect("wait for smtpload"));
    }
    let mut jsons = Vec::new();
    let mut logs = Vec::new();
    for (i, m) in amounts.iter().enumerate() {
        let (j, l) = files(i);
        let v = json(&j);
        assert_eq!(v["messages"]["accepted"].as_u64(), Some(*m));
        let started = v["run"]["started_unix"].as_f64().unwrap();
        assert!(
            started >= at.parse::<f64>().unwrap() - 0.001,
            "{started} < {at}"
        );
        jsons.push(j.to_str().unwrap().to_string());
        logs.push(l.to_str().unwrap().to_string());
    }
    let out_json = dir.join("all.json");
    let args: Vec<&str> = ["merge", "--json", out_json.to_str().unwrap()]
        .into_iter()
        .chain(jsons.iter().map(String::as_str))
        .collect();
    let merged = ok(&smtpload(&args));
    assert!(merged.contains("9 connections, 500 messages"), "{merged}");
    assert!(
        merged.contains("500 accepted, 0 failed, 500 started"),
        "{merged}"
    );
    assert_eq!(message_row_count(&merged), Some(500), "{merged}");
    let v = json(&out_json);
    assert_eq!(v["messages"]["accepted"], 500);
    assert_eq!(v["latency"]["message"]["count"], 500);
    // The span: from the earliest start to the latest end, over all three.
    let ends: Vec<f64> = (0..3)
        .map(|i| json(&files(i).0)["run"]["ended_unix"].as_f64().unwrap())
        .collect();
    let latest = ends.iter().copied().fold(0.0, f64::max);
    assert!((v["run"]["ended_unix"].as_f64().unwrap() - latest).abs() < 1e-6);
    // The interval logs merge to the same count.
    let args: Vec<&str> = std::iter::once("merge")
        .chain(logs.iter().map(String::as_str))
        .collect();
    let merged = ok(&smtpload(&args));
    assert!(merged.contains("3 interval logs"), "{merged}");
    assert_eq!(message_row_count(&merged), Some(500), "{merged}");
    let report = sink.stop();
    assert_eq!(report.stats.counters.messages, 500);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn merge_names_the_file_it_cannot_use() {
    let dir = tmp("badmerge");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"run\": {}}\n").unwrap();
    let o = smtpload(&["merge", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!("smtpload: cannot read {}: no run.mode\n", bad.display())
    );
    let o = smtpload(&["merge", "/nonexistent/x.hlog"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .starts_with("smtpload: cannot read /nonexistent/x.hlog: "));
    let _ = std::fs::remove_dir_all(&dir);
}
