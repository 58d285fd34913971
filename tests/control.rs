//! The control and metrics endpoint (`--control`) against the real reactor,
//! with real clients: mail goes in over SMTP (lettre and raw sessions), and
//! `/metrics`, `/stats`, `/rules`, `/reset` and `/health` are asked with ureq
//! or, for what no polite client sends, raw sockets. Every check is exact
//! (status, body, counter), every read has a deadline, and Python's
//! `prometheus_client` parses the exposition where it can be had.

mod common;

use common::metrics::Metrics;
use common::{Client, DEADLINE, EHLO};
use serde_json::json;
use smtpsink::config::Config;
use smtpsink::reactor::{Background, Report, Server};
use smtpsink::sink::Discard;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The seed every test server gets when its rules name none.
const SEED: u64 = 42;
const START: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
const TEXT: &str = "text/plain; charset=utf-8";
/// How long a test waits for a condition the loop reaches asynchronously
/// (a closed connection counted as closed).
const SETTLE: Duration = Duration::from_secs(5);

/// A rule on recipients and one on the second message of a session.
const RULES: &str = r#"
[[rule]]
name = "deny-rcpt"
stage = "rcpt"
address = "deny@*"
reply = "550 5.1.1 No such user"

[[rule]]
name = "spam-second"
stage = "end"
transaction = 2
reply = "554 5.7.1 Second message refused"
"#;

/// A server with its control endpoint, on ephemeral loopback ports.
struct Ctl {
    smtp: SocketAddr,
    control: SocketAddr,
    agent: ureq::Agent,
    server: Background<Discard>,
}

/// A server whose rules are `rules` (a TOML file, written for `--rules`)
/// if any, with the control endpoint served as `main` serves it.
fn start(name: &str, rules: Option<&str>) -> Ctl {
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.hostname = "sink.test".into();
    if let Some(text) = rules {
        let path = tmp().join(format!("control-{name}.toml"));
        std::fs::write(&path, text).expect("write the rules file");
        config.rules = Some(path);
    }
    let mut server = Server::from_config(&config, Discard::default()).expect("bind");
    let ctl = server
        .serve_control("127.0.0.1:0".parse().unwrap())
        .expect("bind the control port");
    assert_eq!(server.control_addr(), Some(ctl));
    let engine = config.engine(SEED).expect("rules");
    assert_eq!(engine.is_some(), rules.is_some());
    server.set_rules(engine, SEED);
    let server = server.spawn();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(DEADLINE))
        .build()
        .into();
    Ctl {
        smtp: server.addrs[0],
        control: ctl,
        agent,
        server,
    }
}

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A response as ureq got it.
#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: String,
    content_length: Option<usize>,
    allow: Option<String>,
    body: String,
}

impl Ctl {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.control)
    }

    fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
        let mut r = r.expect("HTTP exchange");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().expect("ASCII header").to_string())
        };
        let content_type = header("content-type").unwrap_or_default();
        let content_length = header("content-length").map(|v| v.parse().expect("length"));
        let allow = header("allow");
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().expect("body");
        Resp {
            status,
            content_type,
            content_length,
            allow,
            body,
        }
    }

    fn get(&self, path: &str) -> Resp {
        Self::finish(self.agent.get(self.url(path)).call())
    }

    fn put(&self, path: &str, body: &[u8]) -> Resp {
        Self::finish(self.agent.put(self.url(path)).send(body))
    }

    fn post(&self, path: &str) -> Resp {
        Self::finish(self.agent.post(self.url(path)).send_empty())
    }

    /// `/metrics`, checked for its content type, as its samples.
    fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.content_type.starts_with("text/plain; version=0.0.4"),
            "{r:?}"
        );
        Metrics::parse(&r.body)
    }

    /// `/metrics` once `ready` holds of it (the loop counts a closed
    /// connection when it sees the close, not when the client closes).
    fn metrics_when(&self, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        let until = Instant::now() + SETTLE;
        loop {
            let m = self.metrics();
            if ready(&m) {
                return m;
            }
            assert!(Instant::now() < until, "never {what}:\n{}", m.text);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `/stats` as JSON.
    fn stats(&self) -> serde_json::Value {
        let r = self.get("/stats");
        assert_eq!(
            (r.status, r.content_type.as_str()),
            (200, "application/json")
        );
        assert!(r.body.ends_with('\n'), "{r:?}");
        serde_json::from_str(&r.body).expect("JSON")
    }

    fn stop(self) -> Report<Discard> {
        self.server.stop().expect("run")
    }
}

/// What [`traffic`] sent, and so what every counter must say.
const TRAFFIC_REPLIES: [(&str, u64); 6] = [
    ("220", 3),
    ("221", 3),
    ("250", 14),
    ("354", 4),
    ("550", 1),
    ("554", 1),
];

/// Mail over three connections: lettre delivers two messages, each on its
/// own connection; a raw session has a recipient refused by `deny-rcpt`
/// and its second message refused by `spam-second`. Returns the body
/// octets of the three accepted messages.
fn traffic(smtp: SocketAddr) -> u64 {
    use lettre::message::header::ContentType;
    use lettre::{Message, SmtpTransport, Transport};
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(smtp.port())
        .timeout(Some(DEADLINE))
        .build();
    let mut bytes = 0;
    for i in 0..2 {
        let email = Message::builder()
            .from("Sender <sender@example.test>".parse().unwrap())
            .to("ok@example.test".parse().unwrap())
            .subject(format!("message {i}"))
            .header(ContentType::TEXT_PLAIN)
            .body(String::from("hello\r\n"))
            .unwrap();
        // lettre ends the data with CRLF . CRLF after the message's own
        // last line: the body gains an empty line.
        bytes += email.formatted().len() as u64 + 2;
        let response = mailer.send(&email).expect("lettre send");
        assert_eq!(response.code().to_string(), "250");
    }
    let mut c = Client::greeted(smtp);
    c.send_expect("EHLO client.test\r\n", EHLO);
    c.send_expect("MAIL FROM:<a@b.test>\r\n", "250 2.1.0 Ok\r\n");
    c.send_expect("RCPT TO:<deny@d.test>\r\n", "550 5.1.1 No such user\r\n");
    c.send_expect("RCPT TO:<ok@d.test>\r\n", "250 2.1.5 Ok\r\n");
    c.send_expect("DATA\r\n", START);
    let body = "Subject: 1\r\n\r\nbody\r\n";
    c.send_expect(&format!("{body}.\r\n"), "250 2.0.0 Ok: queued\r\n");
    bytes += body.len() as u64;
    c.send_expect(
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<ok@d.test>\r\nDATA\r\n",
        &format!("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n{START}"),
    );
    c.send_expect(
        "Subject: 2\r\n\r\nrefused\r\n.\r\n",
        "554 5.7.1 Second message refused\r\n",
    );
    c.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    c.expect_closed();
    bytes
}

fn replies_expected() -> BTreeMap<String, u64> {
    TRAFFIC_REPLIES
        .iter()
        .map(|(c, n)| ((*c).to_string(), *n))
        .collect()
}

#[test]
fn metrics_count_real_smtp_traffic() {
    let ctl = start("metrics", Some(RULES));
    let before = ctl.metrics();
    assert_eq!(before.n("smtpsink_connections_total"), 0);
    assert_eq!(before.histogram_count(), 0);
    assert!(before.by_label("smtpsink_replies_total").is_empty());
    let body_bytes = traffic(ctl.smtp);
    let m = ctl.metrics_when("all closed", |m| m.n("smtpsink_connections_open") == 0);
    assert_eq!(m.n("smtpsink_connections_total"), 3);
    assert_eq!(m.n("smtpsink_connections_refused_total"), 0);
    assert_eq!(m.n("smtpsink_transactions_total"), 4);
    let outcomes = m.by_label("smtpsink_messages_total");
    let want: BTreeMap<String, u64> = [("accepted", 3), ("dropped", 0), ("rejected", 1)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert_eq!(outcomes, want);
    assert_eq!(m.n("smtpsink_recipients_total"), 4);
    assert_eq!(m.n("smtpsink_body_bytes_total"), body_bytes);
    assert_eq!(m.by_label("smtpsink_replies_total"), replies_expected());
    let timeouts = m.by_label("smtpsink_timeouts_total");
    assert_eq!(timeouts.values().sum::<u64>(), 0, "{timeouts:?}");
    assert_eq!(timeouts.len(), 3);
    let hits = m.by_label("smtpsink_rule_hits_total");
    let want: BTreeMap<String, u64> = [("deny-rcpt", 1), ("spam-second", 1)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert_eq!(hits, want);
    // Every message's final reply is one transaction duration.
    assert_eq!(m.histogram_count(), 4);
    assert!(m.n("smtpsink_network_bytes_total{direction=\"in\"}") > body_bytes);
    assert!(m.n("smtpsink_network_bytes_total{direction=\"out\"}") > 0);
    for scope in ["server", "client"] {
        for limit in ["connections", "messages", "recipients"] {
            let key = format!("smtpsink_rate_limited_total{{limit=\"{limit}\",scope=\"{scope}\"}}");
            assert_eq!(m.n(&key), 0);
        }
    }
    assert_eq!(m.n("smtpsink_magic_addresses_total"), 0);
    let up: f64 = m.samples["smtpsink_uptime_seconds"].parse().unwrap();
    assert!(up > 0.0 && up < 60.0, "uptime {up}");
    let report = ctl.stop();
    let c = report.stats.counters;
    assert_eq!((c.connections, c.messages, c.messages_rejected), (3, 3, 1));
}

#[test]
fn stats_json_matches_the_traffic() {
    let ctl = start("stats", Some(RULES));
    let body_bytes = traffic(ctl.smtp);
    ctl.metrics_when("all closed", |m| m.n("smtpsink_connections_open") == 0);
    let j = ctl.stats();
    let c = &j["counters"];
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{v} in {j:#}"));
    let counts = [
        ("connections", 3),
        ("connections_open", 0),
        ("connections_refused", 0),
        ("timeouts", 0),
        ("transactions", 4),
        ("messages", 3),
        ("messages_rejected", 1),
        ("messages_dropped", 0),
        ("recipients", 4),
        ("body_bytes", body_bytes),
    ];
    for (k, want) in counts {
        assert_eq!(num(&c[k]), want, "counters.{k} in {j:#}");
    }
    let classes = &c["replies"];
    assert_eq!(
        ["2xx", "3xx", "4xx", "5xx"].map(|k| num(&classes[k])),
        [20, 4, 0, 2]
    );
    let by_code: BTreeMap<String, u64> = c["replies_by_code"]
        .as_object()
        .expect("replies_by_code")
        .iter()
        .map(|(k, v)| (k.clone(), num(v)))
        .collect();
    assert_eq!(by_code, replies_expected());
    assert!(num(&c["bytes_in"]) > body_bytes);
    assert_eq!(num(&j["latency"]["count"]), 4);
    let rules = &j["rules"];
    assert_eq!(num(&rules["rules"]), 2);
    assert_eq!(num(&rules["seed"]), SEED);
    assert_eq!(rules["hits"], json!({"deny-rcpt": 1, "spam-second": 1}));
    assert_eq!(
        rules["rate_limited"],
        json!({"server": [0, 0, 0], "client": [0, 0, 0]})
    );
    assert_eq!(num(&rules["greylisted"]) + num(&rules["magic"]), 0);
    assert!(j["elapsed_s"].as_f64().expect("elapsed_s") > 0.0);
    ctl.stop();
}

/// A rule with quotes, a backslash and a newline in its name: it holds
/// the first EHLO a millisecond.
const ODD_NAME: &str = r#"
[[rule]]
name = "say \"hi\" \\ twice\nend"
stage = "helo"
delay = "1ms"
first = 1
"#;

/// Parses an exposition with `prometheus_client` and prints, as JSON, every
/// family's name and type and every sample as `[name, labels, value]`.
const PARSE_PY: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families, samples = [], []
for f in text_string_to_metric_families(sys.stdin.read()):
    families.append([f.name, f.type])
    for s in f.samples:
        v = s.value
        samples.append([s.name, s.labels, int(v) if v == int(v) else v])
print(json.dumps({"families": families, "samples": samples}))
"#;

/// A Python that has `prometheus_client`: the system's, else a virtual
/// environment made (once) under the target directory. `None` when neither
/// can be had, unless `SMTPSINK_REQUIRE_PY=1` asks that it fail.
fn prometheus_python() -> Option<PathBuf> {
    let has_it = |py: &Path| {
        Command::new(py)
            .args(["-c", "import prometheus_client.parser"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let system = PathBuf::from("python3");
    if has_it(&system) {
        return Some(system);
    }
    let venv = tmp().join("promvenv");
    let py = venv.join("bin").join("python");
    if has_it(&py) {
        return Some(py);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| {
            let pip = Command::new(&py)
                .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
                .args(["--retries", "1", "--timeout", "15", "prometheus_client"])
                .output()
                .map_err(|e| e.to_string())?;
            if o.status.success() && pip.status.success() && has_it(&py) {
                Ok(())
            } else {
                Err(format!(
                    "venv: {}; pip: {}",
                    String::from_utf8_lossy(&o.stderr).trim(),
                    String::from_utf8_lossy(&pip.stderr).trim()
                ))
            }
        });
    match made {
        Ok(()) => Some(py),
        Err(e) if std::env::var("SMTPSINK_REQUIRE_PY").as_deref() == Ok("1") => {
            panic!("SMTPSINK_REQUIRE_PY=1 but no Python with prometheus_client: {e}")
        }
        Err(e) => {
            eprintln!("skipping: no Python with prometheus_client ({e})");
            None
        }
    }
}

#[test]
fn prometheus_client_parses_the_exposition() {
    let Some(python) = prometheus_python() else {
        return;
    };
    // A rule whose name needs escaping in a label value.
    let rules = format!("{RULES}{ODD_NAME}");
    let ctl = start("python", Some(&rules));
    traffic(ctl.smtp);
    let m = ctl.metrics_when("all closed", |m| m.n("smtpsink_connections_open") == 0);
    let mut child = Command::new(&python)
        .args(["-c", PARSE_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(m.text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.text
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // Every family and every sample line made it through the parser.
    let families = j["families"].as_array().unwrap();
    let types = m.text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(families.len(), types, "{j:#}");
    let samples = j["samples"].as_array().unwrap();
    assert_eq!(samples.len(), m.lines.len(), "{j:#}");
    let family = |name: &str| {
        families
            .iter()
            .find(|f| f[0] == name)
            .map(|f| f[1].as_str().unwrap().to_string())
    };
    // Counters lose `_total` in the family name, as OpenMetrics has it.
    assert_eq!(family("smtpsink_messages").as_deref(), Some("counter"));
    assert_eq!(
        family("smtpsink_connections_open").as_deref(),
        Some("gauge")
    );
    assert_eq!(
        family("smtpsink_transaction_duration_seconds").as_deref(),
        Some("histogram")
    );
    let value = |name: &str, labels: serde_json::Value| {
        samples
            .iter()
            .find(|s| s[0] == name && s[1] == labels)
            .map_or_else(|| panic!("no {name} {labels} in {j:#}"), |s| s[2].clone())
    };
    let msgs = "smtpsink_messages_total";
    assert_eq!(value(msgs, json!({"outcome": "accepted"})), 3);
    assert_eq!(value(msgs, json!({"outcome": "rejected"})), 1);
    assert_eq!(value("smtpsink_replies_total", json!({"code": "250"})), 14);
    assert_eq!(value("smtpsink_connections_total", json!({})), 3);
    let h = "smtpsink_transaction_duration_seconds";
    assert_eq!(value(&format!("{h}_count"), json!({})), 4);
    assert_eq!(value(&format!("{h}_bucket"), json!({"le": "+Inf"})), 4);
    let hits = "smtpsink_rule_hits_total";
    assert_eq!(value(hits, json!({"rule": "deny-rcpt"})), 1);
    // Three EHLOs; the rule fires on the first only.
    assert_eq!(value(hits, json!({"rule": "say \"hi\" \\ twice\nend"})), 1);
    assert!(
        m.text
            .contains("smtpsink_rule_hits_total{rule=\"say \\\"hi\\\" \\\\ twice\\nend\"} 1\n"),
        "{}",
        m.text
    );
    ctl.stop();
}

/// A raw SMTP session up to a transaction's recipients.
fn session(smtp: SocketAddr) -> Client {
    let mut c = Client::greeted(smtp);
    c.send_expect("EHLO client.test\r\n", EHLO);
    c
}

/// Asks RCPT `rcpt` in a fresh transaction: the reply.
fn rcpt(c: &mut Client, rcpt: &str) -> String {
    c.send_expect("MAIL FROM:<a@b.test>\r\n", "250 2.1.0 Ok\r\n");
    c.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
    let r = c.replies(1);
    c.send_expect("RSET\r\n", "250 2.0.0 Ok\r\n");
    r
}

const OK_RCPT: &str = "250 2.1.5 Ok\r\n";
const NO_USER: &str = "550 5.1.1 No such user\r\n";

const DENY: &str = r#"
seed = 7
[[rule]]
name = "deny"
stage = "rcpt"
address = "deny@*"
reply = "550 5.1.1 No such user"
"#;

#[test]
fn put_rules_takes_effect_at_once_and_a_bad_set_changes_nothing() {
    let first = "[[rule]]\nname = \"no-blocked\"\nstage = \"mail\"\naddress = \"blocked@*\"\nreply = \"553 5.7.1 Sender refused\"\n";
    let ctl = start("put", Some(first));
    let mut early = session(ctl.smtp);
    early.send_expect(
        "MAIL FROM:<blocked@x.test>\r\n",
        "553 5.7.1 Sender refused\r\n",
    );
    assert_eq!(rcpt(&mut early, "deny@d.test"), OK_RCPT);

    let r = ctl.put("/rules", DENY.as_bytes());
    assert_eq!(
        (r.status, r.content_type.as_str(), r.body.as_str()),
        (
            200,
            TEXT,
            "rules replaced: 1 rule(s), rate limits none, magic addresses off, seed 7\n"
        )
    );
    // The session open since before: its next commands follow the new set.
    early.send_expect("MAIL FROM:<blocked@x.test>\r\n", "250 2.1.0 Ok\r\n");
    early.send_expect("RSET\r\n", "250 2.0.0 Ok\r\n");
    assert_eq!(rcpt(&mut early, "deny@d.test"), NO_USER);
    assert_eq!(rcpt(&mut early, "ok@d.test"), OK_RCPT);
    let mut late = session(ctl.smtp);
    assert_eq!(rcpt(&mut late, "DENY@D.TEST"), NO_USER, "globs ignore case");

    // Sets that do not parse or check change nothing.
    let bad_stage = DENY.replace("\"rcpt\"", "\"rcp\"");
    let r = ctl.put("/rules", bad_stage.as_bytes());
    assert_eq!((r.status, r.content_type.as_str()), (400, TEXT), "{r:?}");
    assert!(
        r.body.starts_with("rules not changed: line ")
            && r.body.contains("rule 1: unknown stage \"rcp\""),
        "{r:?}"
    );
    let r = ctl.put("/rules", b"[[rule]]\nname = \"x\"\nstage = rcpt\n");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body.starts_with("rules not changed: line 3, column 9: "),
        "{r:?}"
    );
    let r = ctl.put("/rules", b"[[rule]]\nstage = \"rcpt\"\n");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("rule 1: no action"), "{r:?}");
    let r = ctl.put("/rules", b"seed = 1\n\xff\n");
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "the rules are not UTF-8\n")
    );
    assert_eq!(rcpt(&mut early, "deny@d.test"), NO_USER);
    assert_eq!(rcpt(&mut late, "deny@x.test"), NO_USER);
    early.send_expect("MAIL FROM:<blocked@x.test>\r\n", "250 2.1.0 Ok\r\n");
    early.send_expect("RSET\r\n", "250 2.0.0 Ok\r\n");

    let j = ctl.stats();
    assert_eq!(j["rules"]["rules"], 1);
    assert_eq!(j["rules"]["seed"], 7);
    assert_eq!(j["rules"]["hits"], json!({"deny": 4}));
    let m = ctl.metrics();
    let want: BTreeMap<String, u64> = [("deny".to_string(), 4)].into();
    assert_eq!(m.by_label("smtpsink_rule_hits_total"), want);

    // An empty set: no rules at all.
    let r = ctl.put("/rules", b"");
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            200,
            "rules replaced: 0 rule(s), rate limits none, magic addresses off, seed 7\n"
        )
    );
    assert_eq!(rcpt(&mut early, "deny@d.test"), OK_RCPT);
    assert!(ctl
        .metrics()
        .by_label("smtpsink_rule_hits_total")
        .is_empty());
    early.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    late.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    ctl.stop();
}

#[test]
fn put_rules_on_a_server_started_without_rules() {
    let ctl = start("norules", None);
    assert!(!ctl.metrics().text.contains("smtpsink_rule_hits_total"));
    assert!(ctl.stats().get("rules").is_none());
    let mut early = session(ctl.smtp);
    assert_eq!(rcpt(&mut early, "deny@d.test"), OK_RCPT);
    let with_limit = DENY.replace("seed = 7", "[limits]\nconnections = \"1/h\"\n");
    let r = ctl.put("/rules", with_limit.as_bytes());
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            200,
            "rules replaced: 1 rule(s), rate limits set, magic addresses off, seed 42\n"
        )
    );
    // A session begun with no rules at all asks the new engine too.
    assert_eq!(rcpt(&mut early, "deny@d.test"), NO_USER);
    let mut late = session(ctl.smtp);
    assert_eq!(rcpt(&mut late, "deny@d.test"), NO_USER);
    assert_eq!(rcpt(&mut late, "ok@d.test"), OK_RCPT);
    // The second connection since the set came is past "1/h"; the reply
    // names the server's host.
    let mut third = Client::connect(ctl.smtp);
    assert_eq!(
        third.replies(1),
        "421 4.7.0 sink.test Error: too many connections, try again later\r\n"
    );
    third.expect_closed();
    let j = ctl.stats();
    assert_eq!(j["rules"]["seed"], SEED);
    assert_eq!(j["rules"]["hits"], json!({"deny": 2}));
    assert_eq!(j["rules"]["rate_limited"]["server"], json!([1, 0, 0]));
    let m = ctl.metrics();
    assert_eq!(
        m.n("smtpsink_rate_limited_total{limit=\"connections\",scope=\"server\"}"),
        1
    );
    assert_eq!(m.n("smtpsink_rule_hits_total{rule=\"deny\"}"), 2);
    early.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    late.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    ctl.stop();
}

#[test]
fn reset_zeroes_the_counters_but_not_the_open_connections() {
    let ctl = start("reset", Some(RULES));
    traffic(ctl.smtp);
    let mut open = session(ctl.smtp);
    let m = ctl.metrics_when("one open", |m| m.n("smtpsink_connections_open") == 1);
    assert_eq!(m.n("smtpsink_messages_total{outcome=\"accepted\"}"), 3);
    let r = ctl.post("/reset");
    assert_eq!(
        (r.status, r.content_type.as_str(), r.body.as_str()),
        (200, TEXT, "counters reset\n")
    );
    let m = ctl.metrics();
    assert_eq!(m.n("smtpsink_messages_total{outcome=\"accepted\"}"), 0);
    assert_eq!(m.n("smtpsink_messages_total{outcome=\"rejected\"}"), 0);
    assert_eq!(m.n("smtpsink_connections_total"), 0);
    assert_eq!(m.n("smtpsink_transactions_total"), 0);
    assert_eq!(m.n("smtpsink_body_bytes_total"), 0);
    assert_eq!(m.n("smtpsink_network_bytes_total{direction=\"in\"}"), 0);
    assert!(
        m.by_label("smtpsink_replies_total").is_empty(),
        "{}",
        m.text
    );
    assert_eq!(m.histogram_count(), 0);
    assert_eq!(m.n("smtpsink_transaction_duration_seconds_sum"), 0);
    assert_eq!(m.n("smtpsink_rule_hits_total{rule=\"deny-rcpt\"}"), 0);
    assert_eq!(m.n("smtpsink_connections_open"), 1, "the open one stays");
    let j = ctl.stats();
    assert_eq!(j["counters"]["messages"], 0);
    assert_eq!(j["counters"]["connections_open"], 1);
    assert_eq!(j["latency"]["count"], 0);
    assert_eq!(j["rules"]["hits"]["deny-rcpt"], 0);

    // Counting goes on from zero.
    open.send_expect(
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<deny@d.test>\r\nRCPT TO:<ok@d.test>\r\nDATA\r\n",
        &format!("250 2.1.0 Ok\r\n{NO_USER}250 2.1.5 Ok\r\n{START}"),
    );
    open.send_expect("x\r\n.\r\n", "250 2.0.0 Ok: queued\r\n");
    open.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    open.expect_closed();
    let m = ctl.metrics_when("all closed", |m| m.n("smtpsink_connections_open") == 0);
    assert_eq!(m.n("smtpsink_messages_total{outcome=\"accepted\"}"), 1);
    assert_eq!(
        m.n("smtpsink_connections_total"),
        0,
        "accepted before the reset"
    );
    assert_eq!(m.n("smtpsink_body_bytes_total"), 3);
    let want: BTreeMap<String, u64> = [("221", 1), ("250", 3), ("354", 1), ("550", 1)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert_eq!(m.by_label("smtpsink_replies_total"), want);
    assert_eq!(m.histogram_count(), 1);
    assert_eq!(m.n("smtpsink_rule_hits_total{rule=\"deny-rcpt\"}"), 1);
    let report = ctl.stop();
    assert_eq!(report.stats.counters.messages, 1);
}

#[test]
fn health_head_wrong_methods_and_unknown_paths() {
    let ctl = start("routes", None);
    let r = ctl.get("/health");
    assert_eq!(
        (r.status, r.content_type.as_str(), r.body.as_str()),
        (200, TEXT, "ok\n")
    );
    let r = ctl.get("/metrics?name[]=smtpsink_messages_total");
    assert_eq!(r.status, 200, "a query is ignored: {r:?}");
    // HEAD: a GET's head, no body. The uptime sample's value is the only
    // part of the text whose length changes from one request to the next.
    let head = Ctl::finish(ctl.agent.head(ctl.url("/metrics")).call());
    assert_eq!(head.status, 200);
    assert!(head.content_type.starts_with("text/plain; version=0.0.4"));
    assert_eq!(head.body, "");
    let get = ctl.get("/metrics");
    let len = head.content_length.expect("Content-Length");
    let uptime = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("smtpsink_uptime_seconds "))
            .map_or(0, str::len)
    };
    let fixed = get.body.len() - uptime(&get.body);
    assert!(len > fixed && len <= fixed + 24, "HEAD {len}, GET {fixed}+");
    let head = Ctl::finish(ctl.agent.head(ctl.url("/health")).call());
    assert_eq!((head.status, head.content_length), (200, Some(3)));
    let head = Ctl::finish(ctl.agent.head(ctl.url("/nope")).call());
    assert_eq!((head.status, head.body.as_str()), (404, ""));

    let wrong = [
        (ctl.post("/metrics"), "/metrics", "GET, HEAD"),
        (ctl.put("/stats", b"{}"), "/stats", "GET, HEAD"),
        (ctl.get("/rules"), "/rules", "PUT"),
        (ctl.post("/rules"), "/rules", "PUT"),
        (ctl.get("/reset"), "/reset", "POST"),
        (
            Ctl::finish(ctl.agent.delete(ctl.url("/health")).call()),
            "/health",
            "GET, HEAD",
        ),
    ];
    for (r, path, allow) in wrong {
        assert_eq!(
            (r.status, r.allow.as_deref(), r.body.as_str()),
            (405, Some(allow), format!("{path} takes {allow}\n").as_str()),
        );
    }
    let not_found = "not found: try /metrics, /stats, /health, PUT /rules, POST /reset\n";
    for path in ["/", "/metrics/", "/Metrics", "/metricsx", "/rules/1"] {
        let r = ctl.get(path);
        assert_eq!(
            (r.status, r.content_type.as_str(), r.body.as_str()),
            (404, TEXT, not_found),
            "{path}"
        );
    }
    let r = ctl.post("/nope");
    assert_eq!(r.status, 404);
    // The rules were not touched by any of it.
    assert!(ctl.stats().get("rules").is_none());
    ctl.stop();
}

/// A raw control connection: writes bytes, reads whole responses.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Http {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(SETTLE)).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Writes what the server may stop reading (it answers and closes).
    fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads more; false at the end (a close, or a reset after it).
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read: {e}; have {:?}", String::from_utf8_lossy(&self.buf)),
        }
    }

    /// The next response (`head_only`: to a HEAD, so no body follows).
    fn response(&mut self, head_only: bool) -> Raw {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill(),
                "closed before a whole head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).expect("ASCII head");
        let mut lines = head.trim_end().split("\r\n");
        let status_line = lines.next().unwrap().to_string();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("a header line");
                (k.to_string(), v.to_string())
            })
            .collect();
        let mut r = Raw {
            status_line,
            headers,
            body: Vec::new(),
        };
        let len: usize = r
            .header("content-length")
            .expect("Content-Length")
            .parse()
            .unwrap();
        if !head_only {
            while self.buf.len() < len {
                assert!(self.fill(), "closed in the body");
            }
            r.body = self.buf.drain(..len).collect();
        }
        r
    }

    /// Everything until the server closes.
    fn rest(&mut self) -> String {
        while self.fill() {}
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }

    fn expect_closed(&mut self) {
        assert_eq!(self.rest(), "", "nothing more before the close");
    }
}

/// The exact bytes of an error the server answers before it closes.
fn refusal(status: &str, why: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {TEXT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}\n",
        why.len() + 1
    )
}

/// `bytes` on a connection of their own: all the server said before closing.
fn exchange(ctl: SocketAddr, bytes: &[u8]) -> String {
    let mut h = Http::connect(ctl);
    h.send_lossy(bytes);
    h.rest()
}

/// A request head of exactly `len` octets.
fn head_of(len: usize) -> Vec<u8> {
    let start = "GET /health HTTP/1.1\r\nX-Pad: ";
    let pad = len - start.len() - 4;
    format!("{start}{}\r\n\r\n", "p".repeat(pad)).into_bytes()
}

#[test]
fn malformed_requests_are_refused_and_mail_goes_on() {
    let ctl = start("malformed", None);
    let mut mail = session(ctl.smtp);
    mail.send_expect("MAIL FROM:<a@b.test>\r\n", "250 2.1.0 Ok\r\n");
    let malformed = "400 Bad Request";
    let mut tls_hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec();
    tls_hello.extend((0u8..=160).map(|i| i.wrapping_mul(37)));
    let many_headers: String = (0..40)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect::<Vec<_>>()
        .concat();
    let cases: Vec<(Vec<u8>, String)> = vec![
        (tls_hello, refusal(malformed, "malformed request")),
        (
            b"GET / HTTP/9.9\r\n\r\n".to_vec(),
            refusal(malformed, "malformed request"),
        ),
        (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            refusal(malformed, "malformed request"),
        ),
        (
            b"GET /metrics HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(),
            refusal(malformed, "bad Content-Length"),
        ),
        (
            b"GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
            refusal(malformed, "bad Content-Length"),
        ),
        (
            head_of(16 * 1024 + 1),
            refusal(
                "431 Request Header Fields Too Large",
                "request head too large",
            ),
        ),
        (
            // A head that never ends.
            [&b"GET /metrics HTTP/1.1\r\n"[..], &[b'X'; 20_000]].concat(),
            refusal(
                "431 Request Header Fields Too Large",
                "request head too large",
            ),
        ),
        (
            format!("GET /metrics HTTP/1.1\r\n{many_headers}\r\n").into_bytes(),
            refusal("431 Request Header Fields Too Large", "too many headers"),
        ),
        (
            [
                &b"PUT /rules HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"[..],
                &[b'#'; 100_000],
            ]
            .concat(),
            refusal("413 Content Too Large", "body too large"),
        ),
        (
            b"PUT /rules HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n".to_vec(),
            refusal("413 Content Too Large", "body too large"),
        ),
        (
            b"PUT /rules HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nseed=\r\n0\r\n\r\n"
                .to_vec(),
            refusal(
                "501 Not Implemented",
                "Transfer-Encoding is not supported; send Content-Length",
            ),
        ),
    ];
    for (bytes, want) in &cases {
        assert_eq!(
            &exchange(ctl.control, bytes),
            want,
            "for {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        );
    }
    // The limits themselves are allowed.
    let mut h = Http::connect(ctl.control);
    h.send(&head_of(16 * 1024));
    let r = h.response(false);
    assert_eq!(
        (r.status_line.as_str(), r.body.as_slice()),
        ("HTTP/1.1 200 OK", &b"ok\n"[..])
    );
    let big = format!("# {}\n", "x".repeat(1024 * 1024 - 3));
    assert_eq!(big.len(), 1024 * 1024);
    let r = ctl.put("/rules", big.as_bytes());
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            200,
            "rules replaced: 0 rule(s), rate limits none, magic addresses off, seed 42\n"
        )
    );
    // The session in the middle of its transaction never noticed.
    mail.send_expect("RCPT TO:<c@d.test>\r\n", OK_RCPT);
    mail.send_expect("DATA\r\n", START);
    mail.send_expect("hi\r\n.\r\n", "250 2.0.0 Ok: queued\r\n");
    mail.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    // And the endpoint still serves.
    let m = ctl.metrics();
    assert_eq!(m.n("smtpsink_messages_total{outcome=\"accepted\"}"), 1);
    ctl.stop();
}

#[test]
fn stalled_control_clients_do_not_block_mail() {
    let ctl = start("stalled", None);
    let _silent = Http::connect(ctl.control);
    let mut half = Http::connect(ctl.control);
    half.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    let mut half_body = Http::connect(ctl.control);
    half_body.send(b"PUT /rules HTTP/1.1\r\nContent-Length: 100\r\n\r\nseed = 3\n");
    // A whole mail transaction, and a new session, while they wait.
    let mut mail = session(ctl.smtp);
    mail.send_expect(
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
        &format!("250 2.1.0 Ok\r\n{OK_RCPT}{START}"),
    );
    mail.send_expect("hi\r\n.\r\n", "250 2.0.0 Ok: queued\r\n");
    let mut other = Client::greeted(ctl.smtp);
    other.send_expect("NOOP\r\n", "250 2.0.0 Ok\r\n");
    let r = ctl.get("/health");
    assert_eq!(r.status, 200);
    // The halves were kept: finished, they are answered.
    half.send(b"\r\n");
    let r = half.response(false);
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    let m = Metrics::parse(std::str::from_utf8(&r.body).unwrap());
    assert_eq!(m.n("smtpsink_messages_total{outcome=\"accepted\"}"), 1);
    let rest = format!("{:<91}", "# padding");
    half_body.send(rest.as_bytes());
    let r = half_body.response(false);
    assert_eq!(
        (
            r.status_line.as_str(),
            String::from_utf8_lossy(&r.body).as_ref()
        ),
        (
            "HTTP/1.1 200 OK",
            "rules replaced: 0 rule(s), rate limits none, magic addresses off, seed 3\n"
        )
    );
    mail.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    other.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    ctl.stop();
}

#[test]
fn keep_alive_pipelining_and_connection_close() {
    let ctl = start("keepalive", None);
    let mut h = Http::connect(ctl.control);
    h.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = h.response(false);
    assert_eq!(
        (
            r.status_line.as_str(),
            r.header("connection"),
            r.body.as_slice()
        ),
        ("HTTP/1.1 200 OK", None, &b"ok\n"[..])
    );
    h.send(b"GET /stats HTTP/1.1\r\n\r\n");
    let r = h.response(false);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(j["counters"]["connections"], 0);
    // Three requests in one write, a HEAD among them: three responses.
    h.send(b"HEAD /health HTTP/1.1\r\n\r\nPOST /reset HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /nope HTTP/1.1\r\n\r\n");
    let r = h.response(true);
    assert_eq!(
        (r.status_line.as_str(), r.header("content-length")),
        ("HTTP/1.1 200 OK", Some("3"))
    );
    let r = h.response(false);
    assert_eq!(
        (r.status_line.as_str(), r.body.as_slice()),
        ("HTTP/1.1 200 OK", &b"counters reset\n"[..])
    );
    let r = h.response(false);
    assert_eq!(r.status_line, "HTTP/1.1 404 Not Found");
    // A body split across writes.
    h.send(b"PUT /rules HTTP/1.1\r\nContent-Length: 9\r\n\r\nseed");
    h.send(b" = 5\n");
    let r = h.response(false);
    assert!(
        String::from_utf8_lossy(&r.body).ends_with("seed 5\n"),
        "{r:?}"
    );
    // Connection: close: the response says so, then the server closes.
    h.send(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
    let r = h.response(false);
    assert_eq!(
        (r.header("connection"), r.body.as_slice()),
        (Some("close"), &b"ok\n"[..])
    );
    h.expect_closed();
    // A request after which the client closes: answered, then closed.
    let mut h = Http::connect(ctl.control);
    h.send(b"GET /health HTTP/1.1\r\n\r\n");
    h.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(h.response(false).body, b"ok\n");
    h.expect_closed();
    // HTTP/1.0 closes unless asked to stay.
    let mut h = Http::connect(ctl.control);
    h.send(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(h.response(false).header("connection"), Some("close"));
    h.expect_closed();
    let mut h = Http::connect(ctl.control);
    h.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    // An HTTP/1.0 client closes unless the response says it stays open.
    assert_eq!(h.response(false).header("connection"), Some("keep-alive"));
    h.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(h.response(false).body, b"ok\n");
    // A good request, then garbage: the one answered, the other refused.
    let mut h = Http::connect(ctl.control);
    h.send_lossy(b"GET /health HTTP/1.1\r\n\r\n\x00\x01garbage\r\n\r\n");
    assert_eq!(h.response(false).body, b"ok\n");
    assert_eq!(h.rest(), refusal("400 Bad Request", "malformed request"));
    ctl.stop();
}

#[test]
fn the_thirty_third_control_connection_is_closed() {
    let ctl = start("crowd", None);
    let mut crowd: Vec<Http> = (0..32).map(|_| Http::connect(ctl.control)).collect();
    // Each is served: all 32 are accepted and held.
    for h in &mut crowd {
        h.send(b"GET /health HTTP/1.1\r\n\r\n");
        assert_eq!(h.response(false).body, b"ok\n");
    }
    let mut extra = Http::connect(ctl.control);
    extra.send_lossy(b"GET /health HTTP/1.1\r\n\r\n");
    extra.expect_closed();
    // Mail is not affected by the control port's limit.
    let mut mail = Client::greeted(ctl.smtp);
    mail.send_expect("NOOP\r\n", "250 2.0.0 Ok\r\n");
    for h in &mut crowd {
        h.send(b"GET /health HTTP/1.1\r\n\r\n");
        assert_eq!(h.response(false).body, b"ok\n");
    }
    // One leaves: a newcomer gets its place once the loop saw it go.
    crowd.pop();
    let until = Instant::now() + SETTLE;
    loop {
        let mut h = Http::connect(ctl.control);
        h.send_lossy(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
        let got = h.rest();
        if got.ends_with("\r\n\r\nok\n") {
            break;
        }
        assert_eq!(got, "", "refused ones get nothing");
        assert!(Instant::now() < until, "no place freed");
        std::thread::sleep(Duration::from_millis(2));
    }
    mail.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    ctl.stop();
}
