//! smtpload against an in-process smtpsink (the verify sink) in every TLS
//! and AUTH mode: STARTTLS, implicit TLS, a share of the connections on
//! TLS, AUTH PLAIN and LOGIN with and without TLS, session resumption on
//! and off, BDAT windows and large messages through TLS, certificates
//! checked against a CA file (trusted, another one, the wrong name), and
//! the runs a server cannot serve (AUTH not offered, wrong password).
//!
//! Every figure is exact and seen from both ends: what smtpload counted
//! (messages, errors by stage and code, handshakes full and resumed, by
//! version, failures by class, the tls and auth phases) against what the
//! server counted (messages, connections, handshakes, failures, AUTH) and
//! what the verify sink found (every message intact, none lost).

mod common;

use common::{options, run, spec};
use smtpload::driver::{Options, TlsOptions};
use smtpload::payload::Payload;
use smtpload::report::Results;
use smtpsink::config::Config;
use smtpsink::net::tls::{client_config, self_signed_pem, server_name, Trust};
use smtpsink::proto::client::{Credentials, Stage};
use smtpsink::reactor::{Background, Report, Server};
use smtpsink::sink::Verify;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A condition the server reaches asynchronously must hold within this.
const SETTLE: Duration = Duration::from_secs(10);
/// A run that should end by itself must end within this.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

const USERS: &str = "alice:s3cret\nbob:pa:ss\n";

/// What the server's loop saw last (copied on every tick).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Snapshot {
    connections: u64,
    open: u64,
    failures: u64,
}

/// smtpsink with the verify sink, STARTTLS and an implicit-TLS port.
struct Sink {
    plain: SocketAddr,
    tls: SocketAddr,
    dir: PathBuf,
    probe: Arc<Mutex<Snapshot>>,
    server: Background<Verify>,
}

/// How the server differs from the defaults.
#[derive(Default)]
struct Setup {
    /// Check credentials against [`USERS`].
    users: bool,
    /// Offer AUTH before TLS.
    auth_plaintext: bool,
    /// MAIL before STARTTLS gets 530.
    require_tls: bool,
    /// Serve this certificate and key (PEM) instead of a self-signed one.
    identity: Option<(String, String)>,
}

impl Sink {
    fn start(name: &str, setup: Setup) -> Self {
        let dir = std::env::temp_dir().join(format!("smtpload-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
        config.hostname = "localhost".into();
        config.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
        let Setup {
            users,
            auth_plaintext,
            require_tls,
            identity,
        } = setup;
        config.auth_plaintext = auth_plaintext;
        config.require_tls = require_tls;
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
        let mut server = Server::from_config(&config, Verify::default()).expect("bind");
        let probe = Arc::new(Mutex::new(Snapshot::default()));
        let shared = Arc::clone(&probe);
        server.on_tick(
            Duration::from_millis(5),
            Box::new(move |stats, _, _| {
                *shared.lock().unwrap() = Snapshot {
                    connections: stats.counters.connections,
                    open: stats.counters.connections_open,
                    failures: stats.tls.failures.values().sum(),
                };
            }),
        );
        let tls = server.tls_addrs();
        assert_eq!(tls.len(), 1);
        let server = server.spawn();
        assert_eq!(server.addrs, vec![server.addrs[0], tls[0]]);
        Self {
            plain: server.addrs[0],
            tls: tls[0],
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

    fn stop(self) -> Report<Verify> {
        let report = self.server.stop().expect("run");
        let _ = std::fs::remove_dir_all(&self.dir);
        report
    }
}

/// TLS for every connection (`fraction` 1) trusting anyone, as `localhost`.
fn tls(implicit: bool, fraction: f64, resumption: bool) -> TlsOptions {
    TlsOptions {
        config: client_config(&Trust::Anyone, resumption).expect("client config"),
        name: server_name("localhost").unwrap(),
        implicit,
        fraction,
    }
}

fn credentials(user: &str, password: &str, login: bool) -> Credentials {
    Credentials {
        user: user.into(),
        password: password.into(),
        login,
    }
}

/// A phase's sample count (0 when the phase is missing).
fn phase(r: &Results, name: &str) -> u64 {
    r.phase(name).map_or(0, hdrhistogram::Histogram::len)
}

/// A map with `&'static str` keys, as both reports keep them.
fn table(pairs: &[(&'static str, u64)]) -> BTreeMap<&'static str, u64> {
    pairs.iter().copied().collect()
}

/// Runs `opts` on a thread of its own; `None` if it has not ended within
/// `limit` (the thread is then left behind: stop its server, so that it
/// only retries a closed port).
fn run_within(opts: &Options, payload: &Payload, limit: Duration) -> Option<Results> {
    let (opts, payload) = (opts.clone(), payload.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(&opts, &payload));
    });
    rx.recv_timeout(limit).ok()
}

/// Runs `opts`; fails the test if the run has not ended within
/// [`RUN_DEADLINE`].
fn run_bounded(opts: &Options, payload: &Payload) -> Results {
    run_within(opts, payload, RUN_DEADLINE)
        .unwrap_or_else(|| panic!("the run did not end within {RUN_DEADLINE:?}"))
}

/// Every message delivered intact, counted the same at both ends, and the
/// TLS figures of both ends the same: `handshakes` of them, all TLS 1.3,
/// no failure, and `auth` logins on each side.
#[track_caller]
fn assert_delivered(
    name: &str,
    r: &Results,
    report: &Report<Verify>,
    payload: &Payload,
    messages: u64,
    handshakes: u64,
    auth: u64,
) {
    assert_eq!(
        (r.ok, r.failed, r.error_total(), r.aborted.as_deref()),
        (messages, 0, 0, None),
        "{name}: {:?}",
        r.errors
    );
    let (s, v) = (&report.stats, &report.sink);
    assert_eq!(s.counters.messages, messages, "{name}: server messages");
    assert_eq!(v.counts.messages, messages, "{name}: sink messages");
    assert_eq!(
        v.counts.bytes,
        messages * payload.message_len() as u64,
        "{name}: octets"
    );
    assert_eq!(
        (
            v.intact,
            v.corrupted,
            v.duplicated,
            v.lost(),
            v.unverifiable
        ),
        (messages, 0, 0, 0, 0),
        "{name}: verify"
    );
    assert_eq!(s.counters.connections, r.connections, "{name}: connections");
    assert_eq!(
        (r.tls.handshakes, s.tls.handshakes),
        (handshakes, handshakes),
        "{name}: handshakes (client, server)"
    );
    assert_eq!(r.tls.resumed, s.tls.resumed, "{name}: resumed");
    let versions = if handshakes > 0 {
        table(&[("TLSv1.3", handshakes)])
    } else {
        table(&[])
    };
    assert_eq!(r.tls.versions, versions, "{name}: client versions");
    let server_versions: BTreeMap<&str, u64> = s.tls.versions.clone().into_iter().collect();
    assert_eq!(server_versions, versions, "{name}: server versions");
    assert!(r.tls.failures.is_empty(), "{name}: {:?}", r.tls.failures);
    assert!(s.tls.failures.is_empty(), "{name}: {:?}", s.tls.failures);
    assert_eq!(phase(r, "tls"), handshakes, "{name}: tls phase");
    assert_eq!(phase(r, "auth"), auth, "{name}: auth phase");
    assert_eq!(phase(r, "message"), messages, "{name}: message phase");
    assert_eq!(s.auth(), (auth, 0), "{name}: server AUTH (ok, failed)");
}

#[test]
fn starttls_and_implicit_tls_on_every_connection() {
    for implicit in [false, true] {
        let name = if implicit { "implicit" } else { "starttls" };
        let sink = Sink::start(name, Setup::default());
        let target = if implicit { sink.tls } else { sink.plain };
        let mut opts = options(target);
        opts.tls = Some(tls(implicit, 1.0, true));
        let payload = Payload::new(&spec());
        let r = run_bounded(&opts, &payload);
        let report = sink.stop();
        assert_eq!(r.connections, 4, "{name}");
        assert_delivered(name, &r, &report, &payload, 200, 4, 0);
    }
}

/// `fraction` 0.5 with 4 connections: exactly 2 use TLS, the others stay
/// plaintext, all deliver.
#[test]
fn tls_fraction_half_secures_exactly_half() {
    let sink = Sink::start("fraction", Setup::default());
    let mut opts = options(sink.plain);
    opts.tls = Some(tls(false, 0.5, true));
    let payload = Payload::new(&spec());
    let r = run_bounded(&opts, &payload);
    let report = sink.stop();
    assert_eq!(r.connections, 4);
    assert_delivered("fraction 0.5", &r, &report, &payload, 200, 2, 0);
}

/// AUTH PLAIN and LOGIN, over STARTTLS, over implicit TLS and (with
/// `auth_plaintext`) over plaintext, against a users file: one login per
/// connection.
#[test]
fn auth_plain_and_login_with_and_without_tls() {
    for login in [false, true] {
        for (mode, tls_opts) in [
            ("starttls", Some(tls(false, 1.0, true))),
            ("implicit", Some(tls(true, 1.0, true))),
            ("plaintext", None),
        ] {
            let name = format!("{mode} login={login}");
            let sink = Sink::start(
                &format!("auth-{mode}-{login}"),
                Setup {
                    users: true,
                    auth_plaintext: tls_opts.is_none(),
                    ..Setup::default()
                },
            );
            let implicit = tls_opts.as_ref().is_some_and(|t| t.implicit);
            let mut opts = options(if implicit { sink.tls } else { sink.plain });
            opts.tls = tls_opts;
            opts.client.auth = Some(credentials("bob", "pa:ss", login));
            let payload = Payload::new(&spec());
            let r = run_bounded(&opts, &payload);
            let report = sink.stop();
            assert_eq!(r.connections, 4, "{name}");
            let handshakes = if mode == "plaintext" { 0 } else { 4 };
            assert_delivered(&name, &r, &report, &payload, 200, handshakes, 4);
        }
    }
}

/// AUTH before TLS where the server offers it only after: the run stops at
/// once, nothing is sent, no AUTH reaches the server.
#[test]
fn auth_not_offered_before_tls_stops_the_run() {
    let sink = Sink::start("auth-not-offered", Setup::default());
    let mut opts = options(sink.plain);
    opts.connections = 1;
    opts.client.auth = Some(credentials("alice", "s3cret", false));
    let payload = Payload::new(&spec());
    let r = run_bounded(&opts, &payload);
    let report = sink.stop();
    assert_eq!(
        r.aborted.as_deref(),
        Some("the server does not offer AUTH with that mechanism")
    );
    assert_eq!((r.ok, r.failed), (0, 0));
    assert_eq!(r.errors, BTreeMap::from([((Stage::Auth, 0), 1)]));
    assert_eq!(report.stats.counters.messages, 0);
    assert_eq!(report.stats.counters.transactions, 0);
    assert_eq!(report.stats.auth(), (0, 0));
    assert_eq!(report.stats.tls.handshakes, 0);
}

/// A wrong password: every connection's AUTH gets 535 and no message is
/// started; `max_errors` 2 ends the run at the third refusal. A refused
/// connection is replaced only after a pause, so the server sees exactly
/// three.
#[test]
fn wrong_password_is_refused_535_and_nothing_is_sent() {
    let sink = Sink::start(
        "auth-wrong",
        Setup {
            users: true,
            ..Setup::default()
        },
    );
    let mut opts = options(sink.plain);
    opts.connections = 1;
    opts.max_errors = Some(2);
    opts.tls = Some(tls(false, 1.0, false));
    opts.client.auth = Some(credentials("alice", "wrong", false));
    let payload = Payload::new(&spec());
    let r = run_bounded(&opts, &payload);
    // Each refused connection is replaced after a pause: the run stops
    // before a fourth is opened.
    sink.settle("three connections closed", |s| {
        s.connections == 3 && s.open == 0
    });
    let report = sink.stop();
    assert_eq!(r.aborted.as_deref(), Some("too many errors"));
    assert_eq!((r.ok, r.failed, r.started), (0, 0, 0));
    assert_eq!(r.errors, BTreeMap::from([((Stage::Auth, 535), 3)]));
    assert_eq!(r.connections, 3);
    assert_eq!((r.tls.handshakes, phase(&r, "tls")), (3, 3));
    assert!(r.tls.failures.is_empty(), "{:?}", r.tls.failures);
    let s = &report.stats;
    assert_eq!(s.counters.connections, 3);
    assert_eq!((s.counters.messages, s.counters.transactions), (0, 0));
    assert_eq!(s.auth(), (0, 3));
    assert_eq!((s.tls.handshakes, s.tls.resumed), (3, 0));
    assert!(s.tls.failures.is_empty(), "{:?}", s.tls.failures);
    assert_eq!(report.sink.counts.messages, 0);
}

/// Without `max_errors` a run whose every login is refused must still end,
/// as one whose server does not offer AUTH does: the same credentials will
/// be refused on the next connection too.
#[test]
fn wrong_password_run_ends_without_max_errors() {
    let sink = Sink::start(
        "auth-wrong-unbounded",
        Setup {
            users: true,
            ..Setup::default()
        },
    );
    let mut opts = options(sink.plain);
    opts.connections = 1;
    opts.tls = Some(tls(false, 1.0, false));
    opts.client.auth = Some(credentials("alice", "wrong", false));
    let payload = Payload::new(&spec());
    let r = run_within(&opts, &payload, Duration::from_secs(20));
    let report = sink.stop();
    let refused = report.stats.auth().1;
    let r =
        r.unwrap_or_else(|| panic!("the run never ended: {refused} logins refused and counting"));
    assert_eq!((r.ok, r.failed, r.started), (0, 0, 0));
    assert!(r.aborted.is_some(), "{:?}", r.errors);
    assert_eq!(r.errors.get(&(Stage::Auth, 535)), Some(&refused));
    assert_eq!(report.stats.counters.messages, 0);
}

/// 10 messages, one connection per message, one connection at a time.
fn sequential(target: SocketAddr, tls_opts: TlsOptions) -> Options {
    let mut opts = options(target);
    opts.connections = 1;
    opts.per_connection = 1..=1;
    opts.messages = Some(10);
    opts.tls = Some(tls_opts);
    opts
}

/// Implicit TLS, one connection per message, one at a time: with
/// resumption every connection after the first resumes a session (the
/// server sends one ticket per handshake); without it every handshake is
/// full.
#[test]
fn resumption_on_and_off_implicit_tls() {
    for resumption in [true, false] {
        let name = format!("implicit resumption={resumption}");
        let sink = Sink::start(&format!("resume-implicit-{resumption}"), Setup::default());
        let opts = sequential(sink.tls, tls(true, 1.0, resumption));
        let payload = Payload::new(&spec());
        let r = run_bounded(&opts, &payload);
        let report = sink.stop();
        assert_eq!(r.connections, 10, "{name}");
        assert_delivered(&name, &r, &report, &payload, 10, 10, 0);
        let resumed = if resumption { 9 } else { 0 };
        assert_eq!(
            (r.tls.resumed, report.stats.tls.resumed),
            (resumed, resumed),
            "{name}"
        );
    }
}

/// STARTTLS without resumption: every handshake full.
#[test]
fn no_resumption_starttls_every_handshake_full() {
    let sink = Sink::start("resume-starttls-off", Setup::default());
    let opts = sequential(sink.plain, tls(false, 1.0, false));
    let payload = Payload::new(&spec());
    let r = run_bounded(&opts, &payload);
    let report = sink.stop();
    assert_eq!(r.connections, 10);
    assert_delivered("starttls no resumption", &r, &report, &payload, 10, 10, 0);
    assert_eq!((r.tls.resumed, report.stats.tls.resumed), (0, 0));
}

/// STARTTLS with resumption, as implicit TLS above: 9 of 10 resumed.
#[test]
fn resumption_starttls() {
    let sink = Sink::start("resume-starttls-on", Setup::default());
    let opts = sequential(sink.plain, tls(false, 1.0, true));
    let payload = Payload::new(&spec());
    let r = run_bounded(&opts, &payload);
    let report = sink.stop();
    assert_eq!(r.connections, 10);
    assert_delivered("starttls resumption", &r, &report, &payload, 10, 10, 0);
    assert_eq!((r.tls.resumed, report.stats.tls.resumed), (9, 9));
}

/// A fraction with one connection at a time: connections 2, 4, 6, 8 and
/// 10 use STARTTLS (connection k, from 0, when floor((k+1)/2) > floor(k/2)),
/// the others stay plaintext.
#[test]
fn tls_fraction_half_sequential_connections() {
    let sink = Sink::start("fraction-sequential", Setup::default());
    let opts = sequential(sink.plain, tls(false, 0.5, false));
    let payload = Payload::new(&spec());
    let r = run_bounded(&opts, &payload);
    let report = sink.stop();
    assert_eq!(r.connections, 10);
    assert_delivered("fraction sequential", &r, &report, &payload, 10, 5, 0);
    assert_eq!((r.tls.resumed, report.stats.tls.resumed), (0, 0));
}

/// The same with resumption: the TLS connections after the first resume,
/// the plaintext ones in between take nothing from the session cache.
#[test]
fn tls_fraction_half_sequential_connections_resume() {
    let sink = Sink::start("fraction-sequential-resume", Setup::default());
    let opts = sequential(sink.plain, tls(false, 0.5, true));
    let payload = Payload::new(&spec());
    let r = run_bounded(&opts, &payload);
    let report = sink.stop();
    assert_delivered("fraction sequential", &r, &report, &payload, 10, 5, 0);
    assert_eq!((r.tls.resumed, report.stats.tls.resumed), (4, 4));
}

/// BDAT with a window of 8 and 64 KiB chunks of 300 kB messages, through
/// STARTTLS after AUTH LOGIN: the TLS buffers fill and drain, nothing is
/// lost or changed.
#[test]
fn bdat_window_and_large_messages_through_tls() {
    for (mode, bdat) in [("bdat window 8", true), ("pipelined data", false)] {
        let sink = Sink::start(&format!("large-{bdat}"), Setup::default());
        let mut opts = options(sink.plain);
        opts.connections = 2;
        opts.messages = Some(30);
        opts.client.bdat = bdat;
        opts.client.window = 8;
        opts.client.auth = Some(credentials("x", "y", true));
        opts.tls = Some(tls(false, 1.0, true));
        let mut sp = spec();
        sp.size = 300_000;
        sp.chunk = if bdat { 65_536 } else { 0 };
        let payload = Payload::new(&sp);
        let r = run_bounded(&opts, &payload);
        let report = sink.stop();
        assert_delivered(mode, &r, &report, &payload, 30, 2, 2);
    }
}

/// `require_tls`: STARTTLS runs deliver; a plaintext run has every MAIL
/// refused with 530 and nothing accepted.
#[test]
fn require_tls_takes_starttls_refuses_plaintext() {
    let sink = Sink::start(
        "require-tls",
        Setup {
            require_tls: true,
            ..Setup::default()
        },
    );
    let mut opts = options(sink.plain);
    opts.tls = Some(tls(false, 1.0, true));
    let payload = Payload::new(&spec());
    let r = run_bounded(&opts, &payload);
    let report = sink.stop();
    assert_delivered("require-tls starttls", &r, &report, &payload, 200, 4, 0);

    let sink = Sink::start(
        "require-tls-plain",
        Setup {
            require_tls: true,
            ..Setup::default()
        },
    );
    let mut opts = options(sink.plain);
    opts.messages = Some(20);
    opts.client.pipelining = false;
    let r = run_bounded(&opts, &payload);
    let report = sink.stop();
    assert_eq!((r.ok, r.failed), (0, 20), "{:?}", r.errors);
    assert_eq!(r.errors, BTreeMap::from([((Stage::Mail, 530), 20)]));
    assert_eq!(report.stats.counters.messages, 0);
    assert_eq!(report.sink.counts.messages, 0);
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

/// The server's own certificate as the CA: every handshake checks out.
#[test]
fn certificate_checked_against_its_ca_file() {
    let (cert, key) = self_signed_pem("localhost").unwrap();
    for implicit in [false, true] {
        let name = if implicit {
            "ca implicit"
        } else {
            "ca starttls"
        };
        let sink = Sink::start(
            &format!("ca-ok-{implicit}"),
            Setup {
                identity: Some((cert.clone(), key.clone())),
                ..Setup::default()
            },
        );
        let ca = write_pem(&sink.dir, "ca.pem", &cert);
        let mut opts = options(if implicit { sink.tls } else { sink.plain });
        opts.tls = Some(TlsOptions {
            config: client_config(&Trust::Ca(&ca), true).unwrap(),
            name: server_name("localhost").unwrap(),
            implicit,
            fraction: 1.0,
        });
        let payload = Payload::new(&spec());
        let r = run_bounded(&opts, &payload);
        let report = sink.stop();
        assert_delivered(name, &r, &report, &payload, 200, 4, 0);
    }
}

/// A certificate the client does not trust (another CA) or that names
/// another host: every connection fails at stage tls, smtpload counts a
/// bad certificate and the server the client's alert, nothing is sent;
/// `max_errors` 2 ends the run at the third failure. As with refused
/// logins, a failed connection is replaced only after a pause: the server
/// sees exactly three.
#[test]
fn certificate_check_failure_stops_at_tls() {
    let (cert, key) = self_signed_pem("localhost").unwrap();
    let (other, _) = self_signed_pem("localhost").unwrap();
    for (case, ca_pem, host) in [
        ("another CA", &other, "localhost"),
        ("wrong name", &cert, "mail.example.test"),
    ] {
        for implicit in [false, true] {
            let name = format!("{case} implicit={implicit}");
            let sink = Sink::start(
                &format!("ca-bad-{}-{implicit}", case.replace(' ', "-")),
                Setup {
                    identity: Some((cert.clone(), key.clone())),
                    ..Setup::default()
                },
            );
            let ca = write_pem(&sink.dir, "ca.pem", ca_pem);
            let mut opts = options(if implicit { sink.tls } else { sink.plain });
            opts.connections = 1;
            opts.max_errors = Some(2);
            opts.tls = Some(TlsOptions {
                config: client_config(&Trust::Ca(&ca), true).unwrap(),
                name: server_name(host).unwrap(),
                implicit,
                fraction: 1.0,
            });
            let payload = Payload::new(&spec());
            let r = run_bounded(&opts, &payload);
            // A connection that failed before it was ready is replaced
            // after a pause, so the run stops before a fourth is opened.
            let server_failures = table(&[("alert_received", 3)]);
            let total: u64 = server_failures.values().sum();
            sink.settle(&name, |s| {
                s.connections == 3 && s.open == 0 && s.failures == total
            });
            let report = sink.stop();
            assert_eq!(r.aborted.as_deref(), Some("too many errors"), "{name}");
            assert_eq!((r.ok, r.failed, r.started), (0, 0, 0), "{name}");
            assert_eq!(r.errors, BTreeMap::from([((Stage::Tls, 0), 3)]), "{name}");
            assert_eq!(r.connections, 3, "{name}");
            assert_eq!(r.tls.handshakes, 0, "{name}");
            assert_eq!(r.tls.failures, table(&[("bad_certificate", 3)]), "{name}");
            assert_eq!(phase(&r, "tls"), 0, "{name}");
            let s = &report.stats;
            assert_eq!(s.counters.connections, 3, "{name}");
            assert_eq!(s.counters.messages, 0, "{name}");
            assert_eq!(s.tls.handshakes, 0, "{name}");
            let failures: BTreeMap<&str, u64> = s.tls.failures.clone().into_iter().collect();
            assert_eq!(failures, server_failures, "{name}");
            assert_eq!(report.sink.counts.messages, 0, "{name}");
        }
    }
}

/// The same refused certificate without `max_errors`: the run must still
/// end by itself, as one whose server lacks STARTTLS does (the next
/// connection meets the same certificate).
#[test]
fn certificate_check_failure_run_ends_without_max_errors() {
    let (other, _) = self_signed_pem("localhost").unwrap();
    let sink = Sink::start("ca-bad-unbounded", Setup::default());
    let ca = write_pem(&sink.dir, "ca.pem", &other);
    let mut opts = options(sink.plain);
    opts.connections = 1;
    opts.tls = Some(TlsOptions {
        config: client_config(&Trust::Ca(&ca), true).unwrap(),
        name: server_name("localhost").unwrap(),
        implicit: false,
        fraction: 1.0,
    });
    let payload = Payload::new(&spec());
    let r = run_within(&opts, &payload, Duration::from_secs(20));
    let report = sink.stop();
    let failed = report.stats.tls.failures.values().sum::<u64>();
    let r =
        r.unwrap_or_else(|| panic!("the run never ended: {failed} handshakes failed and counting"));
    assert_eq!((r.ok, r.failed, r.started), (0, 0, 0));
    assert!(r.aborted.is_some(), "{:?}", r.errors);
    assert_eq!(
        r.errors.get(&(Stage::Tls, 0)),
        r.tls.failures.get("bad_certificate")
    );
    assert_eq!(report.stats.counters.messages, 0);
    assert_eq!(report.stats.tls.handshakes, 0);
}
