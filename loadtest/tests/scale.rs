//! Running at scale and from many places: generators that start together
//! (`--start-at`) and connections from several local addresses (`--bind`).

mod common;

use common::{options, recording_server, run, spec};
use smtpload::driver::{self, RunError};
use smtpload::payload::Payload;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

#[test]
fn start_at_holds_every_connection_until_the_wall_clock_says_so() {
    let (addr, seen) = recording_server();
    let mut opts = options(addr);
    opts.messages = Some(8);
    let at = SystemTime::now() + Duration::from_millis(700);
    opts.start_at = Some(at);
    let r = run(&opts, &Payload::new(&spec()));
    assert_eq!(r.ok, 8);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), opts.connections);
    for (peer, when) in seen.iter() {
        assert!(
            *when >= at,
            "{peer} connected {:?} early",
            at.duration_since(*when)
        );
    }
}

#[test]
fn a_start_time_that_passed_is_an_error_and_connects_nowhere() {
    let (addr, seen) = recording_server();
    let mut opts = options(addr);
    opts.start_at = Some(SystemTime::now() - Duration::from_secs(5));
    match driver::run(&opts, &Payload::new(&spec()), None) {
        Err(RunError::StartPassed(d)) => assert!(d >= Duration::from_secs(5), "{d:?}"),
        other => panic!("{other:?}"),
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn bind_takes_the_local_addresses_in_turn() {
    let (addr, seen) = recording_server();
    let mut opts = options(addr);
    let from: [IpAddr; 3] = [
        "127.0.0.2".parse().unwrap(),
        "127.0.0.3".parse().unwrap(),
        "127.0.0.4".parse().unwrap(),
    ];
    opts.bind = from.to_vec();
    // One connection at a time, one message each: the server sees them in
    // the order they were opened.
    opts.connections = 1;
    opts.per_connection = 1..=1;
    opts.messages = Some(9);
    let r = run(&opts, &Payload::new(&spec()));
    assert_eq!((r.ok, r.connections), (9, 9));
    let ips: Vec<IpAddr> = seen.lock().unwrap().iter().map(|(p, _)| p.ip()).collect();
    let want: Vec<IpAddr> = (0..9).map(|k| from[k % 3]).collect();
    assert_eq!(ips, want);
}

#[test]
fn per_connection_ranges_draw_each_connections_count_reproducibly() {
    let range = 2..=5;
    let draws = |seed| -> Vec<u64> {
        (0..200)
            .map(|k| driver::connection_limit(&range, seed, k))
            .collect()
    };
    let d = draws(42);
    assert!(d.iter().all(|n| range.contains(n)), "{d:?}");
    for v in range.clone() {
        assert!(d.contains(&v), "{v} never drawn: {d:?}");
    }
    assert_eq!(d, draws(42));
    assert_ne!(d, draws(43));
    assert_eq!(driver::connection_limit(&(3..=3), 42, 7), 3);
    assert_eq!(driver::connection_limit(&(0..=0), 42, 7), 0);

    // One connection at a time: connection k carries exactly its draw,
    // the last one what is left.
    let (addr, seen) = recording_server();
    let mut opts = options(addr);
    opts.connections = 1;
    opts.per_connection = range.clone();
    opts.seed = 42;
    opts.messages = Some(40);
    let r = run(&opts, &Payload::new(&spec()));
    let (mut left, mut conns) = (40u64, 0usize);
    while left > 0 {
        left = left.saturating_sub(d[conns]);
        conns += 1;
    }
    assert_eq!(r.ok, 40);
    assert_eq!(r.connections, conns as u64);
    assert_eq!(seen.lock().unwrap().len(), conns);
}

#[test]
fn several_targets_take_the_connections_in_turn() {
    let (a, seen_a) = recording_server();
    let (b, seen_b) = recording_server();
    let mut opts = options(a);
    opts.targets = vec![a, b];
    opts.connections = 1;
    opts.per_connection = 1..=1;
    opts.messages = Some(7);
    let r = run(&opts, &Payload::new(&spec()));
    assert_eq!((r.ok, r.connections), (7, 7));
    assert_eq!(seen_a.lock().unwrap().len(), 4);
    assert_eq!(seen_b.lock().unwrap().len(), 3);
}
