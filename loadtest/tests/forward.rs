//! Where real MTAs deliver: smtpload speaking LMTP and XCLIENT into
//! smtpsink, with rules that only the right protocol reaches; and Python's
//! smtplib.LMTP, a real LMTP client.

mod common;

use common::{options, run, spec};
use smtpload::payload::Payload;
use smtpsink::config::Config;
use smtpsink::proto::client::Stage;
use smtpsink::reactor::{Background, Server};
use smtpsink::sink::Verify;

/// smtpsink as `config` says, with the rules in `rules`.
fn sink(mut config: Config, name: &str, rules: &str) -> Background<Verify> {
    let path = std::env::temp_dir().join(format!(
        "smtpload-forward-{name}-{}.toml",
        std::process::id()
    ));
    std::fs::write(&path, rules).expect("write the rules file");
    config.rules = Some(path);
    let mut server = Server::from_config(&config, Verify::default()).expect("bind");
    server.set_rules(config.engine(7).expect("rules"), 7);
    server.spawn()
}

/// Two recipients per message (`sink0@`, `sink1@`); a rule at the end of
/// data refuses `sink1@` alone: each LMTP message gets 250 then 452, and
/// counts as delivered; the same rule cannot touch an SMTP message.
#[test]
fn lmtp_per_recipient_refusals_through_smtpload() {
    let rules =
        "[[rule]]\nstage = \"end\"\naddress = \"sink1@*\"\nreply = \"452 4.2.2 Mailbox full\"\n";
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.listen_lmtp = vec!["127.0.0.1:0".parse().unwrap()];
    let server = sink(config, "lmtp", rules);
    let (smtp, lmtp) = (server.addrs[0], server.addrs[1]);
    let payload = Payload::new(&spec());
    for bdat in [false, true] {
        let mut opts = options(lmtp);
        opts.client.lmtp = true;
        opts.client.bdat = bdat;
        opts.client.window = 4;
        opts.messages = Some(40);
        let r = run(&opts, &payload);
        assert_eq!((r.ok, r.failed), (40, 0), "bdat {bdat}");
        assert_eq!(
            r.errors.get(&(Stage::EndOfData, 452)),
            Some(&40),
            "bdat {bdat}: {:?}",
            r.errors
        );
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    }
    let mut opts = options(smtp);
    opts.messages = Some(10);
    let r = run(&opts, &payload);
    assert_eq!((r.ok, r.failed), (10, 0));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let report = server.stop().expect("run");
    assert_eq!(report.stats.counters.messages, 90);
    assert_eq!(report.stats.counters.recipients, 180);
}

/// smtplib.LMTP, a real LMTP client. Its `sendmail` reads one reply after
/// the data (as for SMTP), so the per-recipient replies are read with its
/// own `getreply`: exactly one per accepted recipient, in order.
#[test]
fn python_lmtp_client_gets_one_reply_per_recipient() {
    let rules =
        "[[rule]]\nstage = \"end\"\naddress = \"gone@*\"\nreply = \"550 5.1.1 No such user\"\n";
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.lmtp = true;
    let server = sink(config, "python", rules);
    let script = r#"
import smtplib, sys
s = smtplib.LMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test")
code, ehlo = s.ehlo()
print(code, b"PIPELINING" in ehlo)
s.mail("a@b.test")
for r in ["ok@d.test", "gone@d.test", "ok2@d.test"]:
    s.rcpt(r)
print(s.data("Subject: t\r\n\r\nhi\r\n"))
print(s.getreply())
print(s.getreply())
print(s.quit())
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &server.addrs[0].port().to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "250 True\n(250, b'2.0.0 Ok: queued')\n(550, b'5.1.1 No such user')\n\
(250, b'2.0.0 Ok: queued')\n(221, b'2.0.0 Bye')\n"
    );
    let report = server.stop().expect("run");
    assert_eq!(report.stats.counters.messages, 1);
}

/// `--xclient CIDR`: every connection names a client of that network; a
/// rule for that network (and only it) refuses the recipients, so each
/// refusal proves the server saw the named client.
#[test]
fn xclient_clients_are_what_the_rules_see() {
    let rules =
        "[[rule]]\nstage = \"rcpt\"\nclient = \"10.7.0.0/16\"\nreply = \"451 4.7.1 seen\"\n";
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.xclient = true;
    let server = sink(config, "xclient", rules);
    let payload = Payload::new(&spec());
    let mut opts = options(server.addrs[0]);
    opts.messages = Some(20);
    opts.per_connection = 1..=1;
    opts.xclient = Some("10.7.0.0/16".parse().unwrap());
    let r = run(&opts, &payload);
    assert_eq!((r.ok, r.failed, r.connections), (0, 20, 20));
    assert_eq!(
        r.errors.get(&(Stage::Rcpt, 451)),
        Some(&40),
        "{:?}",
        r.errors
    );
    // Without XCLIENT the client is 127.0.0.1: nothing refused.
    opts.xclient = None;
    let r = run(&opts, &payload);
    assert_eq!((r.ok, r.failed), (20, 0), "{:?}", r.errors);
    server.stop().expect("run");
}

/// A server that does not trust us: XCLIENT's 550 is an error at its own
/// stage, no message is tried, and after three rounds of connections that
/// never got ready the run stops.
#[test]
fn xclient_refused_by_an_untrusting_server() {
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.xclient = true;
    config.trusted = vec!["192.0.2.0/24".parse().unwrap()];
    let server = sink(config, "untrusted", "");
    let mut opts = options(server.addrs[0]);
    opts.connections = 1;
    opts.messages = Some(1);
    opts.xclient = Some("10.7.0.0/16".parse().unwrap());
    let r = run(&opts, &Payload::new(&spec()));
    assert_eq!(r.ok, 0);
    assert_eq!(
        r.errors.get(&(Stage::Xclient, 550)),
        Some(&3),
        "{:?}",
        r.errors
    );
    assert!(r.aborted.is_some());
    let report = server.stop().expect("run");
    assert_eq!(report.stats.counters.messages, 0);
}
