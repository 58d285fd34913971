//! Deferred work against the real reactor: a sink whose verdicts are
//! completed from another thread (the completion path), and replies held by
//! a per-verb delay. Both park one session while the loop serves others, and
//! both must resume input the session had already read, without any new
//! network event.

mod common;

use common::{Client, DEADLINE};
use smtpsink::completion::Completer;
use smtpsink::proto::command::Verb;
use smtpsink::proto::reply::ReplyId;
use smtpsink::proto::server::Settings;
use smtpsink::reactor::{Background, Limits, Server};
use smtpsink::sink::{Discard, SessionId, Sink, Verdict};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EHLO: &str = "250-sink.test\r\n250-PIPELINING\r\n250-SIZE 1048576\r\n250-8BITMIME\r\n\
250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250-DSN\r\n250 HELP\r\n";
const START: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";

type Log = Arc<Mutex<Vec<String>>>;

/// Answers every end of data with `Pending` and hands the session id to the
/// test, which completes it whenever it chooses. Logs what it is told.
struct Deferring {
    log: Log,
    ended: Sender<SessionId>,
}

impl Sink for Deferring {
    fn mail(&mut self, _: SessionId, path: &[u8]) {
        let p = String::from_utf8_lossy(path);
        self.log.lock().unwrap().push(format!("mail <{p}>"));
    }
    fn body(&mut self, _: SessionId, _: &[u8]) {}
    fn end(&mut self, id: SessionId) -> Verdict {
        self.log.lock().unwrap().push("end".into());
        self.ended.send(id).unwrap();
        Verdict::Pending
    }
    fn abort(&mut self, _: SessionId) {
        self.log.lock().unwrap().push("abort".into());
    }
}

fn settings() -> Settings {
    Settings::new("sink.test", 1 << 20, 100, 512)
}

fn limits() -> Limits {
    Limits {
        max_connections: 64,
        max_per_client: 0,
        grace: Duration::from_secs(5),
        spin_polls: 0,
        exit_after_messages: None,
        exit_after_connections: None,
        reuse_port: false,
    }
}

struct Deferred {
    server: Background<Deferring>,
    completer: Completer,
    ended: Receiver<SessionId>,
    log: Log,
}

fn start_deferring() -> Deferred {
    let log = Log::default();
    let (tx, ended) = mpsc::channel();
    let mut completer = None;
    let sink_log = Arc::clone(&log);
    let server = Server::bind_with(
        &["127.0.0.1:0".parse().unwrap()],
        128,
        settings(),
        limits(),
        |c| {
            completer = Some(c);
            Deferring {
                log: sink_log,
                ended: tx,
            }
        },
    )
    .expect("bind")
    .spawn();
    Deferred {
        server,
        completer: completer.expect("the sink was made"),
        ended,
        log,
    }
}

fn logged(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[test]
fn a_deferred_verdict_parks_one_session_and_resumes_its_pipelined_input() {
    let d = start_deferring();
    let addr = d.server.addrs[0];
    let mut a = Client::greeted(addr);
    // Two whole transactions and QUIT in one write: nothing after the first
    // end of data may run before its verdict.
    a.send(
        b"EHLO a\r\nMAIL FROM:<a1@x>\r\nRCPT TO:<r@y>\r\nDATA\r\none\r\n.\r\n\
MAIL FROM:<a2@x>\r\nRCPT TO:<r@y>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(
        a.replies(4),
        format!("{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n{START}")
    );
    let first = d.ended.recv_timeout(DEADLINE).expect("a1 ended");

    // Another client is served meanwhile, through to its own verdict.
    let mut b = Client::greeted(addr);
    b.send_expect(
        "HELO b\r\nMAIL FROM:<b@x>\r\nRCPT TO:<r@y>\r\nDATA\r\n",
        &format!("250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n{START}"),
    );
    b.send(b"bee\r\n.\r\nQUIT\r\n");
    let second = d.ended.recv_timeout(DEADLINE).expect("b ended");
    d.completer.complete(second, Verdict::Accepted);
    assert_eq!(b.replies(2), "250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n");
    b.expect_closed();
    assert_eq!(
        logged(&d.log),
        ["mail <a1@x>", "end", "mail <b@x>", "end"],
        "a2 was read with a1 but not executed before a1's verdict"
    );

    // The verdict arrives: a1 is answered and a2 runs from what was already
    // read, with no new input from the client.
    d.completer.complete(first, Verdict::Accepted);
    assert_eq!(
        a.replies(4),
        format!("250 2.0.0 Ok: queued\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n{START}")
    );
    let third = d.ended.recv_timeout(DEADLINE).expect("a2 ended");
    d.completer
        .complete(third, Verdict::Rejected(ReplyId::LocalError));
    assert_eq!(
        a.replies(2),
        "451 4.3.0 Error: local error in processing\r\n221 2.0.0 Bye\r\n"
    );
    a.expect_closed();
    // A verdict for a session that is gone is dropped.
    d.completer.complete(first, Verdict::Accepted);

    let report = d.server.stop().expect("run");
    let c = report.stats.counters;
    assert_eq!((c.messages, c.messages_rejected, c.transactions), (2, 1, 3));
    assert_eq!(report.stats.latency.len(), 3);
    assert_eq!(
        logged(&d.log),
        [
            "mail <a1@x>",
            "end",
            "mail <b@x>",
            "end",
            "mail <a2@x>",
            "end"
        ]
    );
}

#[test]
fn shutdown_waits_for_a_pending_verdict_then_says_421() {
    let d = start_deferring();
    let mut a = Client::greeted(d.server.addrs[0]);
    a.send_expect(
        "HELO a\r\nMAIL FROM:<a@x>\r\nRCPT TO:<r@y>\r\nDATA\r\n",
        &format!("250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n{START}"),
    );
    a.send(b"x\r\n.\r\nNOOP\r\n");
    let id = d.ended.recv_timeout(DEADLINE).expect("ended");
    d.server.handle.request();
    d.completer.complete(id, Verdict::Accepted);
    assert_eq!(
        a.replies(2),
        "250 2.0.0 Ok: queued\r\n421 4.3.2 sink.test Service shutting down, closing transmission channel\r\n"
    );
    a.expect_closed();
    let report = d.server.join().expect("run");
    assert_eq!(report.stats.counters.messages, 1);
}

#[test]
fn a_delayed_reply_holds_its_session_only() {
    let delay = Duration::from_millis(800);
    let mut s = settings();
    s.set_delay(Verb::Rcpt, delay);
    let server = Server::bind(
        &["127.0.0.1:0".parse().unwrap()],
        128,
        s,
        limits(),
        Discard::default(),
    )
    .expect("bind")
    .spawn();
    let addr = server.addrs[0];
    let mut a = Client::greeted(addr);
    let sent = Instant::now();
    a.send(b"HELO a\r\nMAIL FROM:<a@x>\r\nRCPT TO:<r@y>\r\nNOOP\r\n");
    assert_eq!(a.replies(2), "250 sink.test\r\n250 2.1.0 Ok\r\n");
    // Another client is served while a's reply is held.
    let mut b = Client::greeted(addr);
    b.send_expect(
        "HELO b\r\nNOOP\r\nQUIT\r\n",
        "250 sink.test\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n",
    );
    let b_done = sent.elapsed();
    assert_eq!(a.replies(2), "250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n");
    let a_done = sent.elapsed();
    assert!(a_done >= delay, "the reply came after {a_done:?}");
    assert!(b_done < a_done, "b ({b_done:?}) was not kept waiting");
    a.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    let report = server.stop().expect("run");
    assert_eq!(report.stats.counters.recipients, 1);
}

/// Counts `closed` per session.
#[derive(Default)]
struct Closings(Arc<Mutex<Vec<SessionId>>>);

impl Sink for Closings {
    fn body(&mut self, _: SessionId, _: &[u8]) {}
    fn end(&mut self, _: SessionId) -> Verdict {
        Verdict::Accepted
    }
    fn closed(&mut self, id: SessionId) {
        self.0.lock().unwrap().push(id);
    }
}

#[test]
fn the_sink_hears_closed_once_when_the_client_closes_first() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Closings(Arc::clone(&seen));
    let server = Server::bind(
        &["127.0.0.1:0".parse().unwrap()],
        16,
        settings(),
        limits(),
        sink,
    )
    .expect("bind")
    .spawn();
    let mut c = Client::greeted(server.addrs[0]);
    c.send(b"NOOP\r\n");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.replies(1), "250 2.0.0 Ok\r\n");
    c.expect_closed();
    server.stop().expect("run");
    assert_eq!(seen.lock().unwrap().len(), 1, "{:?}", seen.lock().unwrap());
}
