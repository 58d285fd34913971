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
    opts.targets = vec![a.into(), b.into()];
    opts.connections = 1;
    opts.per_connection = 1..=1;
    opts.messages = Some(7);
    let r = run(&opts, &Payload::new(&spec()));
    assert_eq!((r.ok, r.connections), (7, 7));
    assert_eq!(seen_a.lock().unwrap().len(), 4);
    assert_eq!(seen_b.lock().unwrap().len(), 3);
}

/// smtpsink behind a relay that takes the PROXY header off: smtpload
/// speaks as a proxy, version 1 in plaintext and version 2 before
/// implicit TLS; every header is exactly the one for the client address
/// drawn for that connection and the relay it went to.
#[test]
fn proxy_headers_name_a_drawn_client_and_the_server_before_anything_else() {
    use smtpsink::config::Config;
    use smtpsink::net::tls::{client_config, server_name, Trust};
    use smtpsink::proto::proxy::{self, Version};
    use smtpsink::reactor::Server;
    use smtpsink::sink::Verify;

    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
    let server = Server::from_config(&config, Verify::default()).expect("bind");
    let tls_addr = server.tls_addrs()[0];
    let server = server.spawn();
    let net: ipnet::IpNet = "198.51.100.0/26".parse().unwrap();
    for (version, implicit) in [(Version::V1, false), (Version::V2, true)] {
        let to = if implicit { tls_addr } else { server.addrs[0] };
        let (relay, headers) = common::proxy_relay(to);
        let mut opts = options(relay);
        opts.connections = 1;
        opts.per_connection = 1..=1;
        opts.messages = Some(5);
        opts.seed = 9;
        opts.proxy = Some((version, net));
        if implicit {
            opts.tls = Some(driver::TlsOptions {
                config: client_config(&Trust::Anyone, true).unwrap(),
                name: server_name("localhost").unwrap(),
                implicit: true,
                fraction: 1.0,
            });
        }
        let r = run(&opts, &Payload::new(&spec()));
        assert_eq!((r.ok, r.connections), (5, 5), "{version:?}");
        assert_eq!(r.tls.handshakes, if implicit { 5 } else { 0 });
        let headers = headers.lock().unwrap();
        assert_eq!(headers.len(), 5);
        for (k, h) in headers.iter().enumerate() {
            let from = driver::proxy_client(&net, 9, k as u64);
            assert!(net.contains(&from.ip()), "{from}");
            assert!(from.port() >= 1024);
            assert_eq!(
                *h,
                proxy::header(version, from, relay).unwrap(),
                "{version:?} {k}"
            );
        }
        // Different connections claim different clients.
        assert_ne!(headers[0], headers[1]);
    }
    let report = server.stop().expect("run");
    assert_eq!(report.stats.counters.messages, 10);
}

#[test]
fn proxy_clients_are_hosts_of_the_network_down_to_a_single_address() {
    let one: ipnet::IpNet = "203.0.113.7/32".parse().unwrap();
    let v6: ipnet::IpNet = "2001:db8:42::/48".parse().unwrap();
    let all: ipnet::IpNet = "0.0.0.0/0".parse().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..100 {
        assert_eq!(
            driver::proxy_client(&one, 1, k).ip(),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let a = driver::proxy_client(&v6, 1, k);
        assert!(v6.contains(&a.ip()), "{a}");
        seen.insert(a.ip());
        assert!(driver::proxy_client(&all, 1, k).is_ipv4());
        assert_eq!(
            driver::proxy_client(&v6, 1, k),
            driver::proxy_client(&v6, 1, k)
        );
    }
    assert!(seen.len() > 90, "{} distinct of 100", seen.len());
}

#[test]
fn a_dead_server_among_live_ones_costs_connect_errors_not_the_run() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (live, seen) = recording_server();
    let mut opts = options(dead);
    opts.targets = vec![dead.into(), live.into()];
    opts.connections = 1;
    opts.messages = Some(4);
    let r = run(&opts, &Payload::new(&spec()));
    assert_eq!(r.ok, 4);
    assert!(r
        .errors
        .keys()
        .all(|(stage, _)| *stage == smtpsink::proto::client::Stage::Connect));
    assert!(!seen.lock().unwrap().is_empty());
}

#[test]
fn local_addresses_spread_over_each_servers_own_connections() {
    let (a, seen_a) = recording_server();
    let (b, seen_b) = recording_server();
    let mut opts = options(a);
    opts.targets = vec![a.into(), b.into()];
    opts.bind = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    opts.connections = 1;
    opts.per_connection = 1..=1;
    opts.messages = Some(8);
    let r = run(&opts, &Payload::new(&spec()));
    assert_eq!(r.ok, 8);
    for seen in [seen_a, seen_b] {
        let ips: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.ip().to_string())
            .collect();
        assert_eq!(ips, ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]);
    }
}

/// smtpload speaking as a proxy to smtpsink --proxy-protocol itself: every
/// message arrives, checked by the verify sink, in both versions.
#[test]
fn smtpload_as_a_proxy_into_smtpsink_with_proxy_protocol() {
    use smtpsink::config::Config;
    use smtpsink::proto::proxy::Version;
    use smtpsink::reactor::Server;
    use smtpsink::sink::Verify;
    for version in [Version::V1, Version::V2] {
        let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
        config.proxy_protocol = true;
        let server = Server::from_config(&config, Verify::default())
            .expect("bind")
            .spawn();
        let mut opts = options(server.addrs[0]);
        opts.per_connection = 1..=3;
        opts.messages = Some(60);
        opts.proxy = Some((version, "192.0.2.0/24".parse().unwrap()));
        let r = run(&opts, &Payload::new(&spec()));
        assert_eq!((r.ok, r.failed), (60, 0), "{version:?}");
        let report = server.stop().expect("run");
        assert_eq!(report.stats.counters.messages, 60);
        assert_eq!(report.stats.counters.proxy_refused, 0);
        assert_eq!(report.stats.counters.connections_refused, 0);
    }
}

#[test]
fn a_unix_socket_target_takes_its_turn_beside_a_tcp_one_with_exact_transcripts() {
    use smtpload::driver::Target;
    let dir = std::env::temp_dir().join(format!("smtpload-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fake.sock");
    let _ = std::fs::remove_file(&path);
    let transcripts = common::Fake::default().start_unix(&path);
    let (addr, seen) = recording_server();
    let mut opts = options(addr);
    opts.targets = vec![Target::Unix(path.clone()), addr.into()];
    // One connection at a time, one message each: connections 0, 2, 4 go
    // to the socket file with messages 0, 2, 4; 1 and 3 over TCP.
    opts.connections = 1;
    opts.per_connection = 1..=1;
    opts.messages = Some(5);
    let payload = Payload::new(&spec());
    let r = run(&opts, &payload);
    assert_eq!((r.ok, r.failed, r.connections), (5, 0, 5));
    assert_eq!(r.error_total(), 0, "{:?}", r.errors);
    assert_eq!(seen.lock().unwrap().len(), 2);
    let transcripts = transcripts.lock().unwrap();
    assert_eq!(transcripts.len(), 3);
    let now = std::time::Instant::now();
    for (t, seq) in transcripts.iter().zip([0u64, 2, 4]) {
        let mut wire = Vec::new();
        smtpsink::proto::dot::stuff(&payload.message(seq, payload.stamp(now)), &mut wire);
        let want = [
            "EHLO load.test\r\n".to_string(),
            format!("MAIL FROM:<load{seq}@example.test>\r\n"),
            "RCPT TO:<sink0@example.test>\r\n".into(),
            "RCPT TO:<sink1@example.test>\r\n".into(),
            "DATA\r\n".into(),
            format!("<{} bytes>", wire.len()),
            "QUIT\r\n".into(),
        ];
        assert_eq!(*t.lock().unwrap(), want);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_unix_socket_that_is_not_there_is_named() {
    use smtpload::driver::Target;
    let mut opts = options("127.0.0.1:9".parse().unwrap());
    opts.targets = vec![Target::Unix("/nonexistent/smtpload.sock".into())];
    match driver::run(&opts, &Payload::new(&spec()), None) {
        Err(e @ RunError::Unreachable(..)) => assert_eq!(
            e.to_string(),
            "cannot connect to unix:/nonexistent/smtpload.sock: no such file or directory"
        ),
        other => panic!("{other:?}"),
    }
}
