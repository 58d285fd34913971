//! STARTTLS, implicit TLS and AUTH against real clients: Python's smtplib
//! (`starttls`, `login`, a forced LOGIN, `SMTP_SSL`, refused credentials, a
//! refused certificate, TLS 1.2), lettre (STARTTLS and implicit TLS, PLAIN
//! and LOGIN, a checked certificate, a wrong password) and swaks (`--tls`,
//! `--tlsc`, `--auth`) when it is installed. Each test starts its own
//! server in-process, asserts every reply the client saw, and then the
//! server's final statistics exactly: connections, messages, body octets,
//! handshakes (full and resumed) by version, TLS failures by class, and
//! AUTH successes and failures.
//!
//! Every external process runs under a deadline and is killed (by its own
//! child handle) past it; a client missing from the machine (python3,
//! swaks, swaks without TLS) skips its test with a printed reason.

use smtpsink::config::Config;
use smtpsink::net::tls::self_signed_pem;
use smtpsink::reactor::{Background, Report, Server};
use smtpsink::sink::Discard;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client process gets this long, all of it.
const PROCESS_DEADLINE: Duration = Duration::from_secs(30);
/// A condition the server reaches asynchronously must hold within this.
const SETTLE: Duration = Duration::from_secs(10);
/// Sockets of in-process clients give up after this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The users of every `auth_users` file here (a password with a colon).
const USERS: &str = "# test users\nalice:s3cret\nbob:pa:ss\n";

/// What the server's loop saw last (copied on every tick).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Snapshot {
    connections: u64,
    open: u64,
    handshakes: u64,
    failures: u64,
}

/// An in-process smtpsink with STARTTLS, an implicit-TLS port and a probe.
struct Sink {
    plain: SocketAddr,
    tls: SocketAddr,
    dir: PathBuf,
    probe: Arc<Mutex<Snapshot>>,
    server: Background<Discard>,
}

/// What `Sink` was asked to be.
#[derive(Default)]
struct Setup {
    /// Check credentials against [`USERS`].
    users: bool,
    /// Serve this certificate and key (PEM) instead of a self-signed one.
    identity: Option<(String, String)>,
    /// Offer AUTH before TLS.
    auth_plaintext: bool,
}

impl Sink {
    fn start(name: &str, setup: Setup) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "smtpsink-tls-clients-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
        config.hostname = "localhost".into();
        config.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
        let Setup {
            users,
            identity,
            auth_plaintext,
        } = setup;
        config.auth_plaintext = auth_plaintext;
        if users {
            let path = dir.join("users.txt");
            std::fs::write(&path, USERS).expect("write users");
            config.auth_users = Some(path);
        }
        if let Some((cert, key)) = identity {
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            std::fs::write(&c, cert).expect("write cert");
            std::fs::write(&k, key).expect("write key");
            config.tls_cert = Some(c);
            config.tls_key = Some(k);
        }
        let mut server = Server::from_config(&config, Discard::default()).expect("bind");
        let probe = Arc::new(Mutex::new(Snapshot::default()));
        let shared = Arc::clone(&probe);
        server.on_tick(
            Duration::from_millis(5),
            Box::new(move |stats, _, _| {
                *shared.lock().unwrap() = Snapshot {
                    connections: stats.counters.connections,
                    open: stats.counters.connections_open,
                    handshakes: stats.tls.handshakes,
                    failures: stats.tls.failures.values().sum(),
                };
            }),
        );
        let tls_addrs = server.tls_addrs();
        assert_eq!(tls_addrs.len(), 1, "one implicit-TLS listener");
        let server = server.spawn();
        assert_eq!(server.addrs.len(), 2, "{:?}", server.addrs);
        assert_eq!(server.addrs[1], tls_addrs[0], "plain first, then TLS");
        Self {
            plain: server.addrs[0],
            tls: tls_addrs[0],
            dir,
            probe,
            server,
        }
    }

    /// Waits until the loop's own figures satisfy `done`.
    fn settle(&self, what: &str, done: impl Fn(&Snapshot) -> bool) {
        let until = Instant::now() + SETTLE;
        loop {
            let now = *self.probe.lock().unwrap();
            if done(&now) {
                return;
            }
            assert!(
                Instant::now() < until,
                "server never reached: {what}; last {now:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(self) -> Report<Discard> {
        let report = self.server.stop().expect("run");
        let _ = std::fs::remove_dir_all(&self.dir);
        report
    }
}

/// The exact final statistics a test expects.
#[derive(Debug, Default)]
struct Want {
    connections: u64,
    messages: u64,
    recipients: u64,
    /// Body octets (after unstuffing) of the accepted messages; `None`:
    /// not checked (a client whose message bytes are its own business).
    bytes: Option<u64>,
    /// Handshakes by version; their sum is the handshake count.
    versions: &'static [(&'static str, u64)],
    resumed: u64,
    /// TLS failures by class.
    failures: &'static [(&'static str, u64)],
    /// AUTH successes and failures.
    auth: (u64, u64),
}

fn assert_stats(report: &Report<Discard>, want: &Want) {
    let s = &report.stats;
    let versions: BTreeMap<&str, u64> = want.versions.iter().copied().collect();
    let failures: BTreeMap<&str, u64> = want.failures.iter().copied().collect();
    let handshakes: u64 = versions.values().sum();
    assert_eq!(s.counters.connections, want.connections, "connections");
    assert_eq!(s.counters.connections_open, 0, "connections open");
    assert_eq!(s.counters.messages, want.messages, "messages");
    assert_eq!(report.sink.messages, want.messages, "sink messages");
    assert_eq!(s.counters.recipients, want.recipients, "recipients");
    if let Some(bytes) = want.bytes {
        assert_eq!(report.sink.bytes, bytes, "sink body octets");
        assert_eq!(s.counters.body_bytes, bytes, "body octets");
    }
    assert_eq!(s.tls.handshakes, handshakes, "handshakes");
    assert_eq!(s.tls.resumed, want.resumed, "resumed");
    let got_versions: BTreeMap<&str, u64> = s.tls.versions.clone().into_iter().collect();
    assert_eq!(got_versions, versions, "versions");
    let got_failures: BTreeMap<&str, u64> = s.tls.failures.clone().into_iter().collect();
    assert_eq!(got_failures, failures, "TLS failures");
    assert_eq!(s.tls.ciphers.values().sum::<u64>(), handshakes, "ciphers");
    assert_eq!(s.tls.latency.len(), handshakes, "handshake latencies");
    assert_eq!(s.auth(), want.auth, "AUTH (ok, failed)");
}

/// A finished client process.
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end within [`PROCESS_DEADLINE`]; `None` if the program
/// is not installed. Past the deadline the child is killed and the test
/// fails with what it printed.
fn run_bounded(cmd: &mut Command) -> Option<Finished> {
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot start {cmd:?}: {e}"),
    };
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let until = Instant::now() + PROCESS_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let Some(status) = status else {
        panic!("{cmd:?} ran past {PROCESS_DEADLINE:?}; stdout {stdout:?} stderr {stderr:?}");
    };
    Some(Finished {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// Helpers every Python script starts with: `r(tag, reply)` prints a reply
/// as `tag CODE TEXT` (lines joined by `|`); `docmd` is wrapped so that
/// every AUTH command smtplib sends is printed as `> AUTH ...`.
const PRELUDE: &str = r#"
import smtplib, ssl, sys

def r(tag, reply):
    print(tag, reply[0], reply[1].decode().replace("\n", "|"))

def traced(s):
    plain_docmd = s.docmd
    def docmd(cmd, args=""):
        if cmd.upper() == "AUTH":
            print(">", cmd, args)
        return plain_docmd(cmd, args)
    s.docmd = docmd
    return s

def refused(tag, f):
    try:
        f()
        print(tag, "accepted?!")
    except smtplib.SMTPAuthenticationError as e:
        print(tag, "refused", e.smtp_code, e.smtp_error.decode())
"#;

/// Runs a Python script (after [`PRELUDE`]) with `args`; its exit status
/// must be 0. `None` (with the reason printed) when python3 is missing.
fn python(script: &str, args: &[String]) -> Option<String> {
    let program = format!("{PRELUDE}\n{script}");
    let Some(done) = run_bounded(Command::new("python3").arg("-c").arg(program).args(args)) else {
        println!("SKIPPED: python3 is not installed");
        return None;
    };
    assert_eq!(
        done.code,
        Some(0),
        "python failed; stdout:\n{}\nstderr:\n{}",
        done.stdout,
        done.stderr
    );
    Some(done.stdout)
}

/// A new self-signed `(cert, key)`, PEM, for `localhost`.
fn identity() -> (String, String) {
    self_signed_pem("localhost").expect("self-signed certificate")
}

fn write_ca(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write CA file");
    path
}

const MSG_ONE: &str = "Subject: one\r\n\r\nbody one\r\n";
/// smtplib stuffs the leading dot, the server takes it off again.
const MSG_TWO: &str = "Subject: two\r\n\r\n.a leading dot\r\nbody two\r\n";

/// smtplib: EHLO, STARTTLS with the certificate checked against the file
/// the server was given, EHLO again, `login()` (smtplib picks PLAIN), two
/// messages, then the things a secured and logged-in session refuses.
#[test]
fn python_starttls_checked_certificate_login_plain_sendmail() {
    let (cert, key) = identity();
    let sink = Sink::start(
        "py-starttls",
        Setup {
            users: true,
            identity: Some((cert.clone(), key)),
            ..Setup::default()
        },
    );
    let ca = write_ca(&sink.dir, "ca.pem", &cert);
    let script = r#"
port, ca = int(sys.argv[1]), sys.argv[2]
s = traced(smtplib.SMTP("localhost", port, local_hostname="client.test", timeout=10))
s.ehlo()
print("plaintext", s.has_extn("starttls"), s.has_extn("auth"))
ctx = ssl.create_default_context(cafile=ca)
r("starttls", s.starttls(context=ctx))
print("version", s.sock.version())
s.ehlo()
print("secured", s.has_extn("starttls"), repr(s.esmtp_features.get("auth")))
r("login", s.login("alice", "s3cret"))
print("sendmail", s.sendmail("a@client.test", ["b@sink.test", "c@sink.test"], sys.argv[3]))
print("sendmail", s.sendmail("a@client.test", ["d@sink.test"], sys.argv[4]))
r("auth again", s.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA=="))
r("starttls again", s.docmd("STARTTLS"))
r("quit", s.quit())
"#;
    let args = [
        sink.plain.port().to_string(),
        ca.display().to_string(),
        MSG_ONE.into(),
        MSG_TWO.into(),
    ];
    let Some(out) = python(script, &args) else {
        return;
    };
    assert_eq!(
        out,
        "plaintext True False\n\
         starttls 220 2.0.0 Ready to start TLS\n\
         version TLSv1.3\n\
         secured False ' PLAIN LOGIN'\n\
         > AUTH PLAIN AGFsaWNlAHMzY3JldA==\n\
         login 235 2.7.0 Authentication successful\n\
         sendmail {}\n\
         sendmail {}\n\
         > AUTH PLAIN AGFsaWNlAHMzY3JldA==\n\
         auth again 503 5.5.1 Error: already authenticated\n\
         starttls again 503 5.5.1 Error: TLS already active\n\
         quit 221 2.0.0 Bye\n"
    );
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 1,
            messages: 2,
            recipients: 3,
            bytes: Some((MSG_ONE.len() + MSG_TWO.len()) as u64),
            versions: &[("TLSv1.3", 1)],
            auth: (1, 0),
            ..Want::default()
        },
    );
}

/// smtplib forced to LOGIN (`s.auth('LOGIN', s.auth_login)`: the user name
/// as the initial response, the password after `334 Password:`), for a
/// user whose password holds a colon.
#[test]
fn python_starttls_forced_login_mechanism() {
    let sink = Sink::start(
        "py-login",
        Setup {
            users: true,
            ..Setup::default()
        },
    );
    let script = r#"
s = traced(smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=10))
r("starttls", s.starttls())
s.ehlo()
s.user, s.password = "bob", "pa:ss"
r("auth", s.auth("LOGIN", s.auth_login))
print("sendmail", s.sendmail("a@client.test", ["b@sink.test"], sys.argv[2]))
r("quit", s.quit())
"#;
    let Some(out) = python(script, &[sink.plain.port().to_string(), MSG_ONE.into()]) else {
        return;
    };
    assert_eq!(
        out,
        "starttls 220 2.0.0 Ready to start TLS\n\
         > AUTH LOGIN Ym9i\n\
         auth 235 2.7.0 Authentication successful\n\
         sendmail {}\n\
         quit 221 2.0.0 Bye\n"
    );
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 1,
            messages: 1,
            recipients: 1,
            bytes: Some(MSG_ONE.len() as u64),
            versions: &[("TLSv1.3", 1)],
            auth: (1, 0),
            ..Want::default()
        },
    );
}

/// `SMTP_SSL` on the implicit-TLS port: no STARTTLS offered there, AUTH is,
/// `login()` and a message.
#[test]
fn python_smtp_ssl_implicit_tls_login() {
    let sink = Sink::start("py-smtps", Setup::default());
    let script = r#"
s = traced(smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=10))
s.ehlo()
print("features", s.has_extn("starttls"), repr(s.esmtp_features.get("auth")))
print("version", s.sock.version())
r("login", s.login("anyone", "anything"))
print("sendmail", s.sendmail("a@client.test", ["b@sink.test", "c@sink.test"], sys.argv[2]))
r("quit", s.quit())
"#;
    let Some(out) = python(script, &[sink.tls.port().to_string(), MSG_ONE.into()]) else {
        return;
    };
    assert_eq!(
        out,
        "features False ' PLAIN LOGIN'\n\
         version TLSv1.3\n\
         > AUTH PLAIN AGFueW9uZQBhbnl0aGluZw==\n\
         login 235 2.7.0 Authentication successful\n\
         sendmail {}\n\
         quit 221 2.0.0 Bye\n"
    );
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 1,
            messages: 1,
            recipients: 2,
            bytes: Some(MSG_ONE.len() as u64),
            versions: &[("TLSv1.3", 1)],
            auth: (1, 0),
            ..Want::default()
        },
    );
}

/// Against `auth_users`: AUTH before STARTTLS (538), a wrong password and
/// an unknown user (smtplib tries PLAIN, then LOGIN: two 535s each), the
/// cancel, bad base64 and unknown-mechanism replies (not counted as
/// failures), then the right password and a message.
#[test]
fn python_wrong_credentials_are_refused_535() {
    let sink = Sink::start(
        "py-wrong",
        Setup {
            users: true,
            ..Setup::default()
        },
    );
    let script = r#"
s = traced(smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=10))
s.ehlo()
r("plaintext auth", s.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA=="))
r("starttls", s.starttls())
s.ehlo()
refused("wrong password", lambda: s.login("alice", "wrong"))
refused("unknown user", lambda: s.login("mallory", "s3cret"))
r("login", s.docmd("AUTH", "LOGIN"))
r("cancel", s.docmd("*"))
r("bad base64", s.docmd("AUTH", "PLAIN !!!"))
r("unknown mechanism", s.docmd("AUTH", "CRAM-MD5"))
r("mail before login", s.mail("a@client.test"))
r("rset", s.rset())
r("right password", s.login("alice", "s3cret"))
print("sendmail", s.sendmail("a@client.test", ["b@sink.test"], sys.argv[2]))
r("quit", s.quit())
"#;
    let Some(out) = python(script, &[sink.plain.port().to_string(), MSG_ONE.into()]) else {
        return;
    };
    let failed = "535 5.7.8 Error: authentication failed: credentials invalid";
    assert_eq!(
        out,
        format!(
            "> AUTH PLAIN AGFsaWNlAHMzY3JldA==\n\
             plaintext auth 538 5.7.11 Encryption required for requested authentication mechanism\n\
             starttls 220 2.0.0 Ready to start TLS\n\
             > AUTH PLAIN AGFsaWNlAHdyb25n\n\
             > AUTH LOGIN YWxpY2U=\n\
             wrong password refused {failed}\n\
             > AUTH PLAIN AG1hbGxvcnkAczNjcmV0\n\
             > AUTH LOGIN bWFsbG9yeQ==\n\
             unknown user refused {failed}\n\
             > AUTH LOGIN\n\
             login 334 VXNlcm5hbWU6\n\
             cancel 501 5.7.0 Error: authentication cancelled\n\
             > AUTH PLAIN !!!\n\
             bad base64 501 5.5.2 Error: cannot decode authentication response\n\
             > AUTH CRAM-MD5\n\
             unknown mechanism 504 5.5.4 Error: unrecognized authentication mechanism\n\
             mail before login 250 2.1.0 Ok\n\
             rset 250 2.0.0 Ok\n\
             > AUTH PLAIN AGFsaWNlAHMzY3JldA==\n\
             right password 235 2.7.0 Authentication successful\n\
             sendmail {{}}\n\
             quit 221 2.0.0 Bye\n"
        )
    );
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 1,
            messages: 1,
            recipients: 1,
            bytes: Some(MSG_ONE.len() as u64),
            versions: &[("TLSv1.3", 1)],
            auth: (1, 4),
            ..Want::default()
        },
    );
}

/// `--auth-plaintext`: AUTH offered and taken before any TLS.
#[test]
fn python_auth_plaintext_login_without_tls() {
    let sink = Sink::start(
        "py-plaintext",
        Setup {
            users: true,
            auth_plaintext: true,
            ..Setup::default()
        },
    );
    let script = r#"
s = traced(smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=10))
s.ehlo()
print("features", s.has_extn("starttls"), repr(s.esmtp_features.get("auth")))
refused("wrong password", lambda: s.login("bob", "pa"))
r("login", s.login("bob", "pa:ss"))
print("sendmail", s.sendmail("a@client.test", ["b@sink.test"], sys.argv[2]))
r("quit", s.quit())
"#;
    let Some(out) = python(script, &[sink.plain.port().to_string(), MSG_ONE.into()]) else {
        return;
    };
    assert_eq!(
        out,
        "features True ' PLAIN LOGIN'\n\
         > AUTH PLAIN AGJvYgBwYQ==\n\
         > AUTH LOGIN Ym9i\n\
         wrong password refused 535 5.7.8 Error: authentication failed: credentials invalid\n\
         > AUTH PLAIN AGJvYgBwYTpzcw==\n\
         login 235 2.7.0 Authentication successful\n\
         sendmail {}\n\
         quit 221 2.0.0 Bye\n"
    );
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 1,
            messages: 1,
            recipients: 1,
            bytes: Some(MSG_ONE.len() as u64),
            auth: (1, 2),
            ..Want::default()
        },
    );
}

/// smtplib held to TLS 1.2 on both ports: the versions table says so.
#[test]
fn python_tls12_is_counted_as_tls12() {
    let sink = Sink::start("py-tls12", Setup::default());
    let script = r#"
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=10)
r("starttls", s.starttls(context=ctx))
print("version", s.sock.version())
print("sendmail", s.sendmail("a@client.test", ["b@sink.test"], sys.argv[3]))
r("quit", s.quit())
s = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[2]), local_hostname="client.test", timeout=10, context=ctx)
print("version", s.sock.version())
print("sendmail", s.sendmail("a@client.test", ["b@sink.test"], sys.argv[3]))
r("quit", s.quit())
"#;
    let args = [
        sink.plain.port().to_string(),
        sink.tls.port().to_string(),
        MSG_ONE.into(),
    ];
    let Some(out) = python(script, &args) else {
        return;
    };
    assert_eq!(
        out,
        "starttls 220 2.0.0 Ready to start TLS\n\
         version TLSv1.2\n\
         sendmail {}\n\
         quit 221 2.0.0 Bye\n\
         version TLSv1.2\n\
         sendmail {}\n\
         quit 221 2.0.0 Bye\n"
    );
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 2,
            messages: 2,
            recipients: 2,
            bytes: Some(2 * MSG_ONE.len() as u64),
            versions: &[("TLSv1.2", 2)],
            ..Want::default()
        },
    );
}

/// A client that does not trust the server's certificate: the handshake
/// fails on both sides, the server counts the client's alert, no
/// handshake, no message.
#[test]
fn python_refusing_the_certificate_is_a_server_side_failure() {
    let sink = Sink::start("py-refuse", Setup::default());
    let (other, _) = identity();
    let ca = write_ca(&sink.dir, "other-ca.pem", &other);
    let script = r#"
port, ca = int(sys.argv[1]), sys.argv[2]
s = smtplib.SMTP("localhost", port, local_hostname="client.test", timeout=10)
try:
    s.starttls(context=ssl.create_default_context(cafile=ca))
    print("secured?!")
except ssl.SSLCertVerificationError as e:
    # 18: X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT (the text varies by version)
    print("refused", e.verify_code)
s.close()
"#;
    let args = [sink.plain.port().to_string(), ca.display().to_string()];
    let Some(out) = python(script, &args) else {
        return;
    };
    assert_eq!(out, "refused 18\n");
    sink.settle("the refused connection counted and closed", |s| {
        s.connections == 1 && s.open == 0 && s.failures == 1
    });
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 1,
            failures: &[("alert_received", 1)],
            ..Want::default()
        },
    );
}

/// lettre's messages and transport for these tests.
mod mail {
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{Message, SmtpTransport};

    pub fn message(i: usize) -> Message {
        Message::builder()
            .from("Sender <sender@client.test>".parse().unwrap())
            .to("rcpt@sink.test".parse().unwrap())
            .subject(format!("lettre {i}"))
            .body(format!("hello {i}\r\n"))
            .expect("message")
    }

    /// A transport to 127.0.0.1:`port` with `tls`, logging in as
    /// `user`/`password` with `mechanisms`.
    pub fn transport(
        port: u16,
        tls: Tls,
        user: &str,
        password: &str,
        mechanisms: Vec<Mechanism>,
    ) -> SmtpTransport {
        SmtpTransport::builder_dangerous("127.0.0.1")
            .port(port)
            .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
                "client.test".into(),
            ))
            .timeout(Some(super::IO_TIMEOUT))
            .tls(tls)
            .credentials(Credentials::new(user.into(), password.into()))
            .authentication(mechanisms)
            .build()
    }

    /// Parameters that accept any certificate.
    pub fn anyone() -> TlsParameters {
        TlsParameters::builder("localhost".into())
            .dangerous_accept_invalid_certs(true)
            .build()
            .expect("TLS parameters")
    }

    /// Parameters that trust exactly `pem`.
    pub fn trusting(pem: &str) -> TlsParameters {
        let cert = lettre::transport::smtp::client::Certificate::from_pem(pem.as_bytes())
            .expect("certificate");
        TlsParameters::builder("localhost".into())
            .add_root_certificate(cert)
            .build()
            .expect("TLS parameters")
    }
}

/// lettre, STARTTLS required, the certificate checked, PLAIN: two messages,
/// each on a connection of its own (the second may resume the first's
/// session).
#[test]
fn lettre_starttls_checked_certificate_plain() {
    use lettre::transport::smtp::authentication::Mechanism;
    use lettre::transport::smtp::client::Tls;
    use lettre::Transport;
    let (cert, key) = identity();
    let sink = Sink::start(
        "lettre-starttls",
        Setup {
            users: true,
            identity: Some((cert.clone(), key)),
            ..Setup::default()
        },
    );
    let mailer = mail::transport(
        sink.plain.port(),
        Tls::Required(mail::trusting(&cert)),
        "alice",
        "s3cret",
        vec![Mechanism::Plain],
    );
    for i in 0..2 {
        let reply = mailer.send(&mail::message(i)).expect("lettre send");
        assert_eq!(reply.code().to_string(), "250");
        assert_eq!(reply.message().collect::<Vec<_>>(), ["2.0.0 Ok: queued"]);
    }
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 2,
            messages: 2,
            recipients: 2,
            versions: &[("TLSv1.3", 2)],
            // One transport, one client configuration: the second
            // connection resumes the first one's session.
            resumed: 1,
            auth: (2, 0),
            ..Want::default()
        },
    );
}

/// lettre, STARTTLS, any certificate, LOGIN only.
#[test]
fn lettre_starttls_login() {
    use lettre::transport::smtp::authentication::Mechanism;
    use lettre::transport::smtp::client::Tls;
    use lettre::Transport;
    let sink = Sink::start(
        "lettre-login",
        Setup {
            users: true,
            ..Setup::default()
        },
    );
    let mailer = mail::transport(
        sink.plain.port(),
        Tls::Required(mail::anyone()),
        "bob",
        "pa:ss",
        vec![Mechanism::Login],
    );
    let reply = mailer.send(&mail::message(0)).expect("lettre send");
    assert_eq!(reply.code().to_string(), "250");
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 1,
            messages: 1,
            recipients: 1,
            versions: &[("TLSv1.3", 1)],
            auth: (1, 0),
            ..Want::default()
        },
    );
}

/// lettre, implicit TLS (`Tls::Wrapper`) on the TLS port, PLAIN and LOGIN.
#[test]
fn lettre_implicit_tls_plain_and_login() {
    use lettre::transport::smtp::authentication::Mechanism;
    use lettre::transport::smtp::client::Tls;
    use lettre::Transport;
    let sink = Sink::start("lettre-wrapper", Setup::default());
    for (i, mechanism) in [Mechanism::Plain, Mechanism::Login].into_iter().enumerate() {
        let mailer = mail::transport(
            sink.tls.port(),
            Tls::Wrapper(mail::anyone()),
            "carol",
            "x",
            vec![mechanism],
        );
        let reply = mailer.send(&mail::message(i)).expect("lettre send");
        assert_eq!(reply.code().to_string(), "250", "{mechanism:?}");
    }
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 2,
            messages: 2,
            recipients: 2,
            versions: &[("TLSv1.3", 2)],
            // A transport (and a client configuration) per connection:
            // nothing to resume.
            resumed: 0,
            auth: (2, 0),
            ..Want::default()
        },
    );
}

/// lettre with a wrong password: a permanent error with 535, nothing sent.
#[test]
fn lettre_wrong_password_is_535() {
    use lettre::transport::smtp::authentication::Mechanism;
    use lettre::transport::smtp::client::Tls;
    use lettre::Transport;
    let sink = Sink::start(
        "lettre-wrong",
        Setup {
            users: true,
            ..Setup::default()
        },
    );
    let mailer = mail::transport(
        sink.plain.port(),
        Tls::Required(mail::anyone()),
        "alice",
        "not-it",
        vec![Mechanism::Plain],
    );
    let err = mailer.send(&mail::message(0)).expect_err("refused");
    assert!(err.is_permanent(), "{err}");
    assert_eq!(err.status().map(|c| c.to_string()), Some("535".into()));
    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 1,
            versions: &[("TLSv1.3", 1)],
            auth: (0, 1),
            ..Want::default()
        },
    );
}

/// Why swaks cannot be used here, if it cannot.
fn swaks_missing() -> Option<String> {
    let Some(done) = run_bounded(Command::new("swaks").arg("--support")) else {
        return Some("swaks is not installed".into());
    };
    let text = format!("{}{}", done.stdout, done.stderr);
    if !text.contains("=== TLS supported") {
        return Some(format!("swaks has no TLS support: {text:?}"));
    }
    if !text.contains("=== Basic AUTH supported") {
        return Some(format!("swaks has no AUTH support: {text:?}"));
    }
    None
}

/// Runs swaks against 127.0.0.1:`port` with `extra` options; its exit
/// status and everything it printed.
fn swaks(port: u16, extra: &[&str]) -> (Option<i32>, String) {
    let done = run_bounded(
        Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args([
                "--from",
                "a@client.test",
                "--to",
                "b@sink.test",
                "--helo",
                "client.test",
                "--timeout",
                "10",
            ])
            .args(extra),
    )
    .expect("swaks ran before");
    (done.code, format!("{}{}", done.stdout, done.stderr))
}

/// What the server said in a swaks transcript: its lines as swaks shows
/// them (`<-` plaintext, `<~` over TLS, `<~*` an error reply), in order.
fn server_lines(transcript: &str) -> String {
    let mut said = String::new();
    for line in transcript.lines().filter(|l| l.starts_with('<')) {
        said.push_str(line);
        said.push('\n');
    }
    said
}

/// An EHLO block for `localhost` as swaks shows it behind `arrow`, the
/// last keyword `last` (STARTTLS before TLS, AUTH after).
fn ehlo_block(arrow: &str, last: &str) -> String {
    use std::fmt::Write as _;
    let mut block = String::new();
    for kw in [
        "localhost",
        "PIPELINING",
        "SIZE 67108864",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "BINARYMIME",
        "DSN",
        "HELP",
    ] {
        writeln!(block, "{arrow}  250-{kw}").unwrap();
    }
    writeln!(block, "{arrow}  250 {last}").unwrap();
    block
}

/// The replies to one message and QUIT, over TLS.
const SWAKS_MAIL: &str = "<~  250 2.1.0 Ok\n\
<~  250 2.1.5 Ok\n\
<~  354 End data with <CR><LF>.<CR><LF>\n\
<~  250 2.0.0 Ok: queued\n\
<~  221 2.0.0 Bye\n";

/// swaks `--tls` (STARTTLS) with AUTH PLAIN, `--tlsc` (implicit) with AUTH
/// LOGIN, and `--tls` with a wrong password (exit 28).
#[test]
fn swaks_starttls_and_tls_on_connect_with_auth() {
    if let Some(why) = swaks_missing() {
        println!("SKIPPED: {why}");
        return;
    }
    let sink = Sink::start(
        "swaks",
        Setup {
            users: true,
            ..Setup::default()
        },
    );
    let greeting = "220 localhost ESMTP smtpsink\n";
    let starttls = format!(
        "<-  {greeting}{}<-  220 2.0.0 Ready to start TLS\n{}",
        ehlo_block("<-", "STARTTLS"),
        ehlo_block("<~", "AUTH PLAIN LOGIN"),
    );

    let (code, t) = swaks(
        sink.plain.port(),
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "s3cret",
        ],
    );
    assert_eq!(code, Some(0), "{t}");
    assert_eq!(
        server_lines(&t),
        format!("{starttls}<~  235 2.7.0 Authentication successful\n{SWAKS_MAIL}"),
        "{t}"
    );
    assert!(t.contains(" ~> AUTH PLAIN AGFsaWNlAHMzY3JldA==\n"), "{t}");

    let (code, t) = swaks(
        sink.tls.port(),
        &[
            "--tlsc",
            "--auth",
            "LOGIN",
            "--auth-user",
            "bob",
            "--auth-password",
            "pa:ss",
        ],
    );
    assert_eq!(code, Some(0), "{t}");
    assert_eq!(
        server_lines(&t),
        format!(
            "<~  {greeting}{}<~  334 VXNlcm5hbWU6\n<~  334 UGFzc3dvcmQ6\n\
             <~  235 2.7.0 Authentication successful\n{SWAKS_MAIL}",
            ehlo_block("<~", "AUTH PLAIN LOGIN")
        ),
        "{t}"
    );

    let (code, t) = swaks(
        sink.plain.port(),
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "nope",
        ],
    );
    // swaks: 28 is "AUTH failed".
    assert_eq!(code, Some(28), "{t}");
    assert_eq!(
        server_lines(&t),
        format!(
            "{starttls}<~* 535 5.7.8 Error: authentication failed: credentials invalid\n\
             <~  221 2.0.0 Bye\n"
        ),
        "{t}"
    );

    let report = sink.stop();
    assert_stats(
        &report,
        &Want {
            connections: 3,
            messages: 2,
            recipients: 2,
            versions: &[("TLSv1.3", 3)],
            // Every swaks run is a process of its own: nothing to resume.
            resumed: 0,
            auth: (2, 1),
            ..Want::default()
        },
    );
}
