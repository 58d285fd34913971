//! A real Postfix delivering into smtpsink over LMTP and over SMTP with
//! XFORWARD (issue 12): runs `scripts/mta-forward-check.sh` with the
//! binaries of this build and asserts that every check passed.
//!
//! The script needs what a private Postfix instance needs: Postfix
//! installed, root, and PID and mount namespaces (`unshare`); it never
//! touches a system Postfix and everything it starts dies with it. Where
//! any of that is missing the test prints `SKIPPED: <why>` and passes;
//! `.ci/run` installs Postfix best effort so that CI runs it. About 10 s.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The smtpsink of this build; smtpload is built beside it by `cargo test
/// --workspace`.
const SMTPSINK: &str = env!("CARGO_BIN_EXE_smtpsink");

/// Why the script cannot run here, or None.
fn missing() -> Option<String> {
    for p in [
        "/usr/sbin/postfix",
        "/usr/sbin/postqueue",
        "/usr/lib/postfix/sbin/master",
    ] {
        if !Path::new(p).exists() {
            return Some(format!("postfix not installed ({p} missing)"));
        }
    }
    let ok = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok("sh", &["-c", "[ \"$(id -u)\" = 0 ]"]) {
        return Some("not root (a private Postfix instance needs root)".into());
    }
    for tool in ["bash", "python3", "timeout", "setpriv", "nsenter", "pgrep"] {
        if !ok("sh", &["-c", &format!("command -v {tool}")]) {
            return Some(format!("{tool} not installed"));
        }
    }
    if !ok(
        "unshare",
        &[
            "--fork",
            "--pid",
            "--mount",
            "--propagation",
            "private",
            "true",
        ],
    ) {
        return Some("no PID and mount namespaces here (unshare failed)".into());
    }
    None
}

#[test]
fn postfix_delivers_over_lmtp_and_smtp_with_xforward() {
    if let Some(why) = missing() {
        println!("SKIPPED: {why}");
        return;
    }
    let smtpload = PathBuf::from(SMTPSINK).with_file_name("smtpload");
    assert!(
        smtpload.exists(),
        "{} missing: run cargo test --workspace",
        smtpload.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mta-forward-check.sh");
    // The script bounds its own steps; `timeout` bounds the whole (SIGTERM
    // lets it stop Postfix and the sink; SIGKILL 20 s later).
    let out = Command::new("timeout")
        .args(["--kill-after=20", "150"])
        .arg(&script)
        .env("SMTPSINK_BIN", SMTPSINK)
        .env("SMTPLOAD_BIN", &smtpload)
        .env("RUN_TIMEOUT", "60")
        .env("DRAIN_TIMEOUT", "40")
        .env_remove("KEEP_LOGS")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/mta-forward-check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "mta-forward-check.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // Every check ran and passed.
    for check in [
        "maildir",
        "lmtp-rcpts",
        "lmtp-trace",
        "xforward",
        "dsn",
        "maillog",
        "queue",
        "sink",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(check))
            .unwrap_or_else(|| panic!("no {check} line in:\n{stdout}"));
        assert!(line.trim_start().starts_with("ok "), "{line}");
    }
}
