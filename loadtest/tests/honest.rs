//! Figures that stay true under slow and failing servers: every phase counts
//! only the server's own time for it, checked against fake servers with
//! exact delays and freezes; the open loop's schedule is reported as kept or
//! not; and a relay that loses, duplicates and corrupts mail is caught by the
//! sink with smtpload's run summary, to the message.

mod common;

use common::{options, run, spec, Fake, Faults, Sink};
use smtpload::driver::Options;
use smtpload::payload::Payload;
use smtpload::report::Results;
use std::time::{Duration, SystemTime};

const MS: u64 = 1000;

/// (min, p50, max) of phase `name`, in microseconds.
fn spread(r: &Results, name: &str) -> (u64, u64, u64) {
    let h = r.phase(name).unwrap_or_else(|| panic!("no phase {name}"));
    assert!(!h.is_empty(), "phase {name} is empty");
    (h.min(), h.value_at_quantile(0.5), h.max())
}

type Tune = fn(&mut Options);

const MODES: [(&str, Tune); 4] = [
    ("pipelined DATA", |_| {}),
    ("lock-step", |o| o.client.pipelining = false),
    ("BDAT", |o| o.client.bdat = true),
    ("BDAT window 4", |o| {
        o.client.bdat = true;
        o.client.window = 4;
    }),
];

#[test]
fn a_slow_end_of_data_is_charged_to_the_data_phase_alone_in_every_mode() {
    // The server answers every end of data exactly D after reading it and
    // everything else at once. Each message then takes D of the server's
    // time, all of it in "data"; nothing else may show D (before, the
    // pipelined envelope riding with the previous end of data read ~D and
    // the message ~2D).
    let d = 150 * MS;
    let server = Fake {
        eod_delay: Duration::from_micros(d),
        ..Fake::default()
    }
    .start();
    let payload = Payload::new(&spec());
    let open: Tune = |o| {
        o.rate = Some(40.0);
        o.connections = 8;
    };
    for (name, tune) in MODES.iter().copied().chain([("open loop", open)]) {
        let mut o = options(server);
        o.connections = 2;
        o.messages = Some(12);
        tune(&mut o);
        let r = run(&o, &payload);
        assert_eq!((r.ok, r.failed), (12, 0), "{name}: {:?}", r.errors);
        let (_, env_p50, env_max) = spread(&r, "envelope");
        assert!(env_p50 < 2 * MS, "{name}: envelope p50 {env_p50}us");
        assert!(env_max < d / 3, "{name}: envelope max {env_max}us");
        // A pipelined command's clock starts when smtpload *sees* the reply
        // before it, which can be a little after the server moved on: so a
        // little under D is as right as a little over.
        let (data_min, _, data_max) = spread(&r, "data");
        assert!(
            data_min >= d * 9 / 10 && data_max < d + d / 3,
            "{name}: data {data_min}..{data_max}us"
        );
        let (msg_min, _, msg_max) = spread(&r, "message");
        assert!(
            msg_min >= d * 9 / 10 && msg_max < d + d / 3,
            "{name}: message {msg_min}..{msg_max}us"
        );
    }
}

#[test]
fn a_global_freeze_shows_in_at_most_one_message_per_connection() {
    // No reply at all for T, 300 ms into the run: in a closed loop each
    // connection has one message that waits it out; the ones queued behind
    // it on the same connection start only after the freeze.
    let t = 800 * MS;
    let payload = Payload::new(&spec());
    for (name, tune) in MODES {
        let server = Fake {
            freeze: Some((Duration::from_millis(300), Duration::from_micros(t))),
            ..Fake::default()
        }
        .start();
        let mut o = options(server);
        o.connections = 3;
        o.messages = None;
        o.duration = Some(Duration::from_millis(1500));
        tune(&mut o);
        let r = run(&o, &payload);
        assert_eq!(r.failed, 0, "{name}: {:?}", r.errors);
        let h = r.phase("message").unwrap();
        let frozen = h.count_between(t / 2, u64::MAX);
        assert!(r.ok > 30, "{name}: only {} messages", r.ok);
        assert!(
            (1..=3).contains(&frozen),
            "{name}: {frozen} messages show the freeze"
        );
    }
}

#[test]
fn connect_and_greeting_are_timed_from_their_own_start() {
    // The greeting comes exactly 60 ms after accept: no greeting can be
    // shorter, whatever smtpload was busy with when it noticed.
    let g = 60 * MS;
    let server = Fake {
        greeting_delay: Duration::from_micros(g),
        ..Fake::default()
    }
    .start();
    let payload = Payload::new(&spec());
    let mut o = options(server);
    o.connections = 150;
    o.messages = Some(150);
    let r = run(&o, &payload);
    assert_eq!(r.ok, 150, "{:?}", r.errors);
    let (g_min, _, g_max) = spread(&r, "greeting");
    assert!(g_min >= g && g_max < 3 * g, "greeting {g_min}..{g_max}us");
    let (_, c_p50, _) = spread(&r, "connect");
    assert!(c_p50 < 5 * MS, "connect p50 {c_p50}us");

    // Against smtpsink a greeting takes at least an accept and a write in
    // another thread: never the 0-1 us of a clock started late.
    let sink = Sink::start();
    let mut o = options(sink.addr);
    o.connections = 100;
    o.messages = Some(100);
    let r = run(&o, &payload);
    sink.stop();
    let (g_min, _, _) = spread(&r, "greeting");
    assert!(g_min >= 5, "greeting min {g_min}us");
}

/// CPU seconds this thread has used (utime + stime of /proc/thread-self/stat).
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3. Linux's
    // USER_HZ is 100 on every architecture smtpload runs on.
    (f[11] + f[12]) as f64 / 100.0
}

#[test]
fn an_open_loop_that_cannot_keep_up_says_so_and_does_not_spin() {
    // Two connections on a server that takes 100 ms per message cannot
    // carry 500 msg/s: most of the schedule is never started.
    let server = Fake {
        eod_delay: Duration::from_millis(100),
        ..Fake::default()
    }
    .start();
    let payload = Payload::new(&spec());
    let mut o = options(server);
    o.connections = 2;
    o.messages = None;
    o.duration = Some(Duration::from_millis(1500));
    o.rate = Some(500.0);
    let cpu = thread_cpu();
    let r = run(&o, &payload);
    let cpu = thread_cpu() - cpu;
    let sc = r.schedule.as_ref().expect("an open loop has a schedule");
    assert_eq!(sc.scheduled, 750, "due before the end: 0 .. 1.498 s");
    assert_eq!(sc.never_started, 750 - r.started);
    assert!(r.started < 100, "started {}", r.started);
    assert!(!sc.kept_up);
    assert!(sc.achieved_rate < 100.0, "achieved {}", sc.achieved_rate);
    assert!(r.text().contains("COULD NOT KEEP UP"), "{}", r.text());
    let j = r.json();
    assert_eq!(j["schedule"]["kept_up"], false);
    assert_eq!(j["run"]["loop"], "open");
    assert_eq!(j["schedule"]["never_started"], 750 - r.started);
    // Waiting for a free connection sleeps in poll: a spinning loop would
    // burn the whole 1.5 s.
    assert!(cpu < 0.5, "{cpu:.2} s of CPU while behind");
}

#[test]
fn a_timed_open_loop_sends_exactly_what_was_due() {
    // 20 msg/s for 1 s: messages due at 0, 0.05 .. 0.95 s; the one due at
    // exactly 1 s is after the end and is not sent.
    let sink = Sink::start();
    let payload = Payload::new(&spec());
    let mut o = options(sink.addr);
    o.messages = None;
    o.duration = Some(Duration::from_secs(1));
    o.rate = Some(20.0);
    let r = run(&o, &payload);
    let report = sink.stop();
    assert_eq!((r.started, r.ok), (20, 20));
    assert_eq!(report.sink.counts.messages, 20);
    let sc = r.schedule.as_ref().unwrap();
    assert_eq!((sc.scheduled, sc.never_started, sc.kept_up), (20, 0, true));
    assert!(
        (19.0..=21.0).contains(&sc.achieved_rate),
        "{}",
        sc.achieved_rate
    );
}

#[test]
fn the_sink_counts_exactly_what_a_relay_lost_duplicated_and_corrupted() {
    // The relay acknowledges everything, forwards 250 ms later, loses 7 and
    // the last message (49), sends 3 twice and corrupts 11 and 20.
    let sink = Sink::start();
    let faults = Faults {
        lose: vec![7, 49],
        duplicate: vec![3],
        corrupt: vec![11, 20],
        delay: Duration::from_millis(250),
    };
    let relay = common::relay(sink.addr, faults);
    let payload = Payload::new(&spec());
    let mut o = options(relay);
    o.messages = Some(50);
    o.client.pipelining = false;
    let r = run(&o, &payload);
    assert_eq!(r.ok, 50);
    // Everything forwarded has arrived once the delay has passed twice.
    std::thread::sleep(Duration::from_millis(1500));
    let mut v = sink.stop().sink;
    assert_eq!(v.lost(), 1, "only the gap below the highest, before");
    v.expect(r.summary(0x5eed), SystemTime::now());
    assert_eq!(v.in_flight(), 2, "not yet declared lost");
    v.finish(true);
    assert_eq!(
        (v.intact, v.corrupted, v.duplicated, v.lost(), v.in_flight()),
        (47, 2, 1, 2, 0)
    );
    assert_eq!(v.unacknowledged(), 0);
    let transit = &v.transit;
    assert_eq!(transit.len(), 49);
    assert!(
        transit.min() >= 250 * MS && transit.value_at_quantile(0.5) < 600 * MS,
        "transit {}..{}us",
        transit.min(),
        transit.max()
    );
}

#[test]
fn the_run_summary_is_the_acknowledged_set() {
    let server = Fake::default().start();
    let payload = Payload::new(&spec());
    let mut o = options(server);
    o.messages = Some(300);
    let t0 = SystemTime::now();
    let r = run(&o, &payload);
    let s = r.summary(0xabc);
    assert_eq!(
        (s.acknowledged(), s.failed, s.acked.clone()),
        (300, 0, vec![(0, 299)])
    );
    assert!(
        s.started_unix
            >= t0
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
                - 0.01
    );
    assert!(s.ended_unix >= s.started_unix);
}

#[test]
fn a_timed_run_does_not_wait_for_greetings_that_never_came() {
    // The server greets 20 s after accept, far past the run's end: the run
    // ends on time instead of waiting out each connection's timeout.
    let server = Fake {
        greeting_delay: Duration::from_secs(20),
        ..Fake::default()
    }
    .start();
    let payload = Payload::new(&spec());
    let mut o = options(server);
    o.messages = None;
    o.duration = Some(Duration::from_millis(500));
    let t0 = std::time::Instant::now();
    let r = run(&o, &payload);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!((r.started, r.ok, r.failed), (0, 0, 0));
}
