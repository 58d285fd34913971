//! The `smtpsink` binary as a user meets it: start-up errors are one line and
//! exit code 1; SIGTERM prints the final statistics and exits 0.

mod common;

use common::{report_field, wait_exit as wait};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_smtpsink");

#[test]
fn port_in_use_is_one_clear_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let child = Command::new(BIN)
        .args(["--listen", &addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out, err) = wait(child);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!("smtpsink: cannot listen on {addr}: address already in use\n")
    );
}

#[test]
fn bad_address_is_a_usage_error() {
    let child = Command::new(BIN)
        .args(["--listen", "localhost:2525"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, _, err) = wait(child);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid value 'localhost:2525' for '--listen <IP:PORT|unix:PATH>'"),
        "{err}"
    );
}

#[test]
fn sigterm_prints_final_stats() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--hostname", "bin.test"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = first
        .strip_prefix("smtpsink: listening on ")
        .and_then(|r| r.strip_suffix(" (discarding mail, STARTTLS, AUTH)\n"))
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();

    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n")
        .unwrap();
    let mut replies = String::new();
    c.read_to_string(&mut replies).unwrap();
    assert_eq!(
        replies,
        "220 bin.test ESMTP smtpsink\r\n250 bin.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.stderr = Some(stderr.into_inner());
    let (code, out, _) = wait(child);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("smtpsink: final statistics after "),
        "{out}"
    );
    let field = |name: &str| report_field(&out, name);
    assert_eq!(field("connections"), 1);
    assert_eq!(field("messages"), 1);
    assert_eq!(field("recipients"), 1);
    assert_eq!(field("body bytes"), 7);
}
