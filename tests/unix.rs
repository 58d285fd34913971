//! `--listen unix:PATH`: an exact transcript over a UNIX-domain socket, the
//! mode, the file removed at exit; a stale socket replaced, a live one and
//! a file that is no socket refused (and kept); PROXY refused at start; the
//! session's peer as trace headers show it (0.0.0.0).

mod common;

use common::{maildir_options, report_field, wait_exit, Proc, DEADLINE, EHLO};
use smtpsink::config::Config;
use smtpsink::reactor::Server;
use smtpsink::sink::Maildir;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smtpsink-unix-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn unix(path: &Path) -> String {
    format!("unix:{}", path.display())
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Runs smtpsink with `args` to its exit: code, stdout, stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_smtpsink"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_exit(child)
}

#[test]
fn a_session_over_a_unix_socket_word_for_word() {
    let d = dir("transcript");
    let path = d.join("smtp.sock");
    let sink = Proc::start(&[
        "-l",
        "127.0.0.1:0",
        "-l",
        &unix(&path),
        "--unix-mode",
        "0640",
    ]);
    assert!(
        sink.said
            .last()
            .unwrap()
            .contains(&format!(", {} (", unix(&path))),
        "{:?}",
        sink.said
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);

    let mut c = connect(&path);
    c.write_all(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n")
        .unwrap();
    let mut replies = String::new();
    c.read_to_string(&mut replies).unwrap();
    assert_eq!(
        replies,
        format!(
            "220 sink.test ESMTP smtpsink\r\n{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n"
        )
    );
    let (code, out, err) = sink.terminate();
    assert_eq!(code, 0, "{err}");
    assert_eq!(report_field(&out, "connections"), 1);
    assert_eq!(report_field(&out, "messages"), 1);
    assert_eq!(report_field(&out, "body bytes"), 7);
    assert!(!path.exists(), "socket file left behind");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn stale_sockets_are_replaced_live_ones_and_other_files_refused() {
    let d = dir("stale");
    let path = d.join("smtp.sock");
    // A socket file nobody accepts on, as a crash leaves it.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let sink = Proc::start(&["-l", &unix(&path)]);
    let mut c = connect(&path);
    let mut greeting = [0u8; 30];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 sink.test ESMTP smtpsink\r\n");

    // Live: a second server must not take it over.
    let (code, out, err) = run(&["-l", "127.0.0.1:0", "-l", &unix(&path)]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "smtpsink: cannot listen on {}: address already in use\n",
            unix(&path)
        )
    );
    // ... and the first still serves on it.
    drop(c);
    let mut again = connect(&path);
    again.read_exact(&mut greeting).unwrap();
    drop(again);
    let (code, _, err) = sink.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(!path.exists());

    // Not a socket: refused, and the file is kept as it was.
    let file = d.join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let (code, out, err) = run(&["-l", &unix(&file)]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "smtpsink: cannot listen on {}: the path exists and is not a socket (left as it is)\n",
            unix(&file)
        )
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // PROXY headers name a client address a UNIX peer cannot be checked by.
    let (code, _, err) = run(&[
        "-l",
        &unix(&path),
        "--proxy-protocol",
        "--trusted",
        "127.0.0.1/32",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("smtpsink: --proxy-protocol with --listen unix:"),
        "{err}"
    );
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_unix_peer_is_0_0_0_0_in_trace_headers() {
    let d = dir("peer");
    let path = d.join("smtp.sock");
    let store = d.join("maildir");
    let opts = maildir_options(&store);
    Maildir::prepare(&opts).unwrap();
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.hostname = "sink.test".into();
    config.listen.push(unix(&path).parse().unwrap());
    let server = Server::from_config_with(&config, |c| Maildir::start(opts, &c))
        .unwrap()
        .spawn();
    let mut c = connect(&path);
    c.write_all(b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")
        .unwrap();
    let mut replies = String::new();
    c.read_to_string(&mut replies).unwrap();
    assert!(
        replies.ends_with("250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n"),
        "{replies}"
    );
    let report = server.stop().unwrap();
    assert_eq!(report.stats.counters.messages, 1);
    let new: Vec<_> = std::fs::read_dir(store.join("new")).unwrap().collect();
    assert_eq!(new.len(), 1);
    let text = std::fs::read_to_string(new[0].as_ref().unwrap().path()).unwrap();
    assert!(
        text.contains("Received: from c ([0.0.0.0])\r\n\tby sink.test (smtpsink) with SMTP id "),
        "{text}"
    );
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&d);
}

/// LMTP over a UNIX socket with XFORWARD, as Postfix's `lmtp` client to a
/// local delivery agent: the socket's client is trusted (its file mode
/// decides who connects), so XFORWARD is offered and obeyed.
#[test]
fn lmtp_with_xforward_over_a_unix_socket() {
    let d = dir("lmtp");
    let path = d.join("lmtp.sock");
    let sink = Proc::start(&[
        "-l",
        "127.0.0.1:0",
        "-l",
        &unix(&path),
        "--lmtp",
        "--xforward",
    ]);
    let mut c = connect(&path);
    c.write_all(
        b"LHLO c\r\nXFORWARD ADDR=192.0.2.1 NAME=mx.example\r\nMAIL FROM:<a@b>\r\n\
RCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n",
    )
    .unwrap();
    let mut replies = String::new();
    c.read_to_string(&mut replies).unwrap();
    let block = EHLO.replace("250 STARTTLS", "250-STARTTLS");
    assert_eq!(
        replies,
        format!(
            "220 sink.test LMTP smtpsink\r\n{block}250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE\r\n\
250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued\r\n250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n"
        )
    );
    let (code, out, err) = sink.terminate();
    assert_eq!(code, 0, "{err}");
    assert_eq!(report_field(&out, "messages"), 1);
    let _ = std::fs::remove_dir_all(&d);
}
