//! The engine against hand-made queries: matchers, firing, determinism,
//! limits, greylisting, replacement of the set.

use super::*;
use rand::RngExt;

fn engine(text: &str) -> Engine {
    Engine::new(spec::parse_file(text).expect("rules"), 99, "sink.test").expect("engine")
}

fn peer(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 40000)
}

struct Q {
    handle: u32,
    peer: SocketAddr,
    now: Instant,
}

impl Q {
    fn open(e: &mut Engine, ip: &str) -> Self {
        let now = Instant::now();
        let peer = peer(ip);
        let handle = e.open(1, peer, now);
        Self { handle, peer, now }
    }

    fn ask(&self, e: &mut Engine, stage: Stage, arg: &str, transaction: u32) -> Decision {
        self.ask_from(e, stage, arg, "", transaction)
    }

    /// Asks within a transaction from `sender`.
    fn ask_from(
        &self,
        e: &mut Engine,
        stage: Stage,
        arg: &str,
        sender: &str,
        transaction: u32,
    ) -> Decision {
        e.decide(&Query {
            id: 1,
            handle: self.handle,
            stage,
            arg: arg.as_bytes(),
            sender: sender.as_bytes(),
            peer: self.peer,
            transaction,
            now: self.now,
        })
    }
}

impl Q {
    /// Asks, and gives the reply text (or the action's name).
    fn say(&self, e: &mut Engine, stage: Stage, arg: &str, transaction: u32) -> String {
        let d = self.ask(e, stage, arg, transaction);
        text(e, d)
    }
}

fn text(e: &Engine, d: Decision) -> String {
    match d.act {
        Act::Reply(r) => String::from_utf8_lossy(e.text(r.index)).into_owned(),
        other => format!("{other:?}"),
    }
}

#[test]
fn matchers_address_domain_client_counts() {
    let mut e = engine(
        r#"
[[rule]]
stage = "rcpt"
address = "bad-*@example.com"
reply = "550 5.1.1 bad"
[[rule]]
stage = "rcpt"
domain = "*.invalid"
reply = "551 5.1.6 invalid"
[[rule]]
stage = "mail"
client = "10.0.0.0/8"
reply = "450 4.7.1 net"
[[rule]]
stage = "mail"
transaction = "3-"
reply = "452 4.5.3 third"
[[rule]]
stage = "helo"
connection = 2
reply = "554 5.7.1 second connection"
[[rule]]
stage = "helo"
domain = "*.spam"
reply = "550 5.7.1 helo"
"#,
    );
    let a = Q::open(&mut e, "127.0.0.1");
    assert_eq!(
        a.say(&mut e, Stage::Rcpt, "BAD-x@Example.COM", 1),
        "550 5.1.1 bad\r\n"
    );
    assert_eq!(
        a.ask(&mut e, Stage::Rcpt, "good@example.com", 1),
        Decision::PROCEED
    );
    assert_eq!(
        a.say(&mut e, Stage::Rcpt, "x@a.invalid", 1),
        "551 5.1.6 invalid\r\n"
    );
    assert_eq!(
        a.ask(&mut e, Stage::Rcpt, "x@invalid.org", 1),
        Decision::PROCEED
    );
    assert_eq!(a.ask(&mut e, Stage::Mail, "s@x", 1), Decision::PROCEED);
    assert_eq!(a.ask(&mut e, Stage::Mail, "s@x", 2), Decision::PROCEED);
    assert_eq!(a.say(&mut e, Stage::Mail, "s@x", 3), "452 4.5.3 third\r\n");
    assert_eq!(
        a.ask(&mut e, Stage::Helo, "host.example", 0),
        Decision::PROCEED
    );
    assert_eq!(
        a.say(&mut e, Stage::Helo, "a.spam", 0),
        "550 5.7.1 helo\r\n"
    );
    // The rcpt rules do not apply at other stages.
    assert_eq!(
        a.ask(&mut e, Stage::Mail, "bad-x@example.com", 1),
        Decision::PROCEED
    );
    let b = Q::open(&mut e, "10.1.2.3");
    assert_eq!(b.say(&mut e, Stage::Mail, "s@x", 1), "450 4.7.1 net\r\n");
    assert_eq!(
        b.say(&mut e, Stage::Helo, "h", 0),
        "554 5.7.1 second connection\r\n"
    );
    let hits: Vec<(String, u64)> = e.hits().map(|(n, h)| (n.to_string(), h)).collect();
    assert_eq!(
        hits.iter().map(|h| h.1).collect::<Vec<_>>(),
        vec![1, 1, 1, 1, 1, 1]
    );
}

#[test]
fn first_every_and_any() {
    let mut e = engine(
        r#"
[[rule]]
stage = "rcpt"
first = 2
reply = "451 4.3.0 first two"
[[rule]]
stage = "rcpt"
every = 3
reply = "452 4.3.0 every third"
[[rule]]
name = "any"
stage = "any"
address = "x@any"
close = true
"#,
    );
    let q = Q::open(&mut e, "127.0.0.1");
    let got: Vec<String> = (0..8)
        .map(|_| q.say(&mut e, Stage::Rcpt, "u@x", 1))
        .collect();
    // Rule 2 sees only what rule 1 let through: its 3rd and 6th match.
    assert_eq!(
        got,
        [
            "451 4.3.0 first two\r\n",
            "451 4.3.0 first two\r\n",
            "Proceed",
            "Proceed",
            "452 4.3.0 every third\r\n",
            "Proceed",
            "Proceed",
            "452 4.3.0 every third\r\n",
        ]
    );
    assert_eq!(q.ask(&mut e, Stage::Mail, "x@any", 1).act, Act::Close);
    assert_eq!(q.ask(&mut e, Stage::Other, "", 1), Decision::PROCEED);
    // "any" is every command, never the connect.
    let e2 = &mut engine("[[rule]]\nstage = \"any\"\nclose = true\n");
    let q2 = Q::open(e2, "127.0.0.1");
    assert_eq!(q2.ask(e2, Stage::Connect, "", 0), Decision::PROCEED);
    assert_eq!(q2.ask(e2, Stage::Quit, "", 0).act, Act::Close);
}

#[test]
fn probabilities_follow_the_seeded_generator_exactly() {
    let rules = "seed = 7\n[[rule]]\nstage = \"rcpt\"\nprobability = 0.3\nreply = \"450\"\n";
    let run = || {
        let mut e = engine(rules);
        let _first = Q::open(&mut e, "127.0.0.1");
        let q = Q::open(&mut e, "127.0.0.1");
        (0..1000)
            .map(|_| matches!(q.ask(&mut e, Stage::Rcpt, "u@x", 1).act, Act::Reply(_)))
            .collect::<Vec<bool>>()
    };
    let a = run();
    assert_eq!(a, run(), "same seed, same traffic: same decisions");
    // The second connection's generator, drawn once per matching RCPT.
    let mut rng = session_rng(7, 2);
    let want: Vec<bool> = (0..1000).map(|_| rng.random::<f64>() < 0.3).collect();
    assert_eq!(a, want);
    let n = a.iter().filter(|x| **x).count();
    // And it is a fair coin: 300 +- 4.5 sigma (sigma = 14.5).
    assert!((235..=365).contains(&n), "{n}");
}

#[test]
fn delays_sample_in_their_bounds() {
    let mut rng = session_rng(1, 1);
    let u = Delay::Uniform(Duration::from_millis(100), Duration::from_millis(200));
    let l = Delay::LogNormal {
        median: Duration::from_millis(100),
        sigma: 0.5,
    };
    let mut below = 0;
    for _ in 0..2000 {
        let d = u.sample(&mut rng);
        assert!(d >= Duration::from_millis(100) && d < Duration::from_millis(200));
        if l.sample(&mut rng) < Duration::from_millis(100) {
            below += 1;
        }
    }
    // Half of a log-normal lies below its median.
    assert!((900..=1100).contains(&below), "{below}");
    assert_eq!(
        Delay::Fixed(Duration::from_secs(2)).sample(&mut rng),
        Duration::from_secs(2)
    );
}

#[test]
fn rate_limits_refuse_past_the_burst_with_their_replies() {
    let mut e = engine(
        "[limits]\nclient_connections = \"2/s\"\nmessages = \"1/m\"\nrecipients = \"1/h\"\n",
    );
    let a = Q::open(&mut e, "127.0.0.1");
    assert_eq!(a.ask(&mut e, Stage::Connect, "", 0), Decision::PROCEED);
    assert_eq!(a.ask(&mut e, Stage::Connect, "", 0), Decision::PROCEED);
    assert_eq!(
        a.say(&mut e, Stage::Connect, "", 0),
        "421 4.7.0 sink.test Error: too many connections, try again later\r\n"
    );
    // Another address has its own bucket.
    let b = Q::open(&mut e, "127.0.0.2");
    assert_eq!(b.ask(&mut e, Stage::Connect, "", 0), Decision::PROCEED);
    // 1/m: the server-wide bucket holds one.
    assert_eq!(a.ask(&mut e, Stage::Mail, "s@x", 1), Decision::PROCEED);
    assert_eq!(
        b.say(&mut e, Stage::Mail, "s@x", 1),
        "451 4.7.1 Error: message rate limit exceeded, try again later\r\n"
    );
    assert_eq!(a.ask(&mut e, Stage::Rcpt, "r@x", 1), Decision::PROCEED);
    assert!(a
        .say(&mut e, Stage::Rcpt, "r@x", 1)
        .starts_with("451 4.7.1 "));
    let k = e.counts();
    assert_eq!(k.rate_limited, [[0, 1, 1], [1, 0, 0]]);
}

#[test]
fn greylisting_keys_on_client_sender_and_recipient() {
    let mut e = engine("[[rule]]\nstage = \"rcpt\"\ngreylist = \"60s\"\n");
    let q = Q::open(&mut e, "127.0.0.1");
    assert_eq!(q.ask(&mut e, Stage::Mail, "s@x", 1), Decision::PROCEED);
    let first = q.ask_from(&mut e, Stage::Rcpt, "r@x", "s@x", 1);
    assert_eq!(
        text(&e, first),
        "451 4.7.1 Greylisted, please try again later\r\n"
    );
    let later = Q {
        now: q.now + Duration::from_secs(61),
        ..q
    };
    assert_eq!(
        later.ask_from(&mut e, Stage::Rcpt, "R@X", "S@x", 1),
        Decision::PROCEED
    );
    // Another sender is another triple.
    assert_eq!(later.ask(&mut e, Stage::Mail, "t@x", 2), Decision::PROCEED);
    assert!(matches!(
        later.ask_from(&mut e, Stage::Rcpt, "r@x", "t@x", 2).act,
        Act::Reply(_)
    ));
    assert_eq!((e.counts().greylisted, e.counts().greylist_passed), (2, 1));
}

#[test]
fn magic_addresses_at_rcpt_and_at_the_end() {
    let mut e = engine("magic_addresses = true\n");
    let q = Q::open(&mut e, "127.0.0.1");
    assert!(q
        .say(&mut e, Stage::Rcpt, "reject552@x", 1)
        .starts_with("552 5.0.0 "));
    let d = q.ask(&mut e, Stage::Rcpt, "delay150ms@x", 1);
    assert_eq!(d.delay, Some(Duration::from_millis(150)));
    assert_eq!(q.ask(&mut e, Stage::Rcpt, "drop@x", 1), Decision::PROCEED);
    assert_eq!(q.ask(&mut e, Stage::EndOfData, "", 1).act, Act::Drop);
    // Once: the next message is normal; a transaction reset before its
    // end (RSET, then a new MAIL: transaction 3) leaves nothing behind.
    assert_eq!(q.ask(&mut e, Stage::EndOfData, "", 1), Decision::PROCEED);
    assert_eq!(
        q.ask(&mut e, Stage::Rcpt, "datareject@x", 2),
        Decision::PROCEED
    );
    assert_eq!(q.ask(&mut e, Stage::Rset, "", 2), Decision::PROCEED);
    assert_eq!(q.ask(&mut e, Stage::EndOfData, "", 3), Decision::PROCEED);
    assert_eq!(e.counts().magic, 4);
}

#[test]
fn install_replaces_the_set_and_keeps_reply_texts() {
    let mut e = engine("[[rule]]\nstage = \"rcpt\"\nreply = \"550 5.1.1 old\"\n");
    let q = Q::open(&mut e, "127.0.0.1");
    let old = q.ask(&mut e, Stage::Rcpt, "r@x", 1);
    let set = spec::parse_file("[[rule]]\nstage = \"mail\"\nreply = \"451 4.3.0 new\"\n").unwrap();
    e.install(set).unwrap();
    assert_eq!(q.ask(&mut e, Stage::Rcpt, "r@x", 1), Decision::PROCEED);
    assert_eq!(q.say(&mut e, Stage::Mail, "s@x", 1), "451 4.3.0 new\r\n");
    // A reply decided under the old set (held, say) still has its text.
    assert_eq!(text(&e, old), "550 5.1.1 old\r\n");
    assert_eq!(e.hits().collect::<Vec<_>>(), vec![("rule-1", 1)]);
    e.reset_counts();
    assert_eq!(e.hits().collect::<Vec<_>>(), vec![("rule-1", 0)]);
}

#[test]
fn sessions_are_asked_only_about_rules_that_can_match_them() {
    let mut e = engine(
        "[[rule]]\nstage = \"end\"\nclient = \"10.0.0.0/8\"\ndrop = true\n\
         [[rule]]\nstage = \"rcpt\"\nconnection = \"2-\"\nreply = \"450\"\n",
    );
    let end = Stage::EndOfData.bit();
    let rcpt = Stage::Rcpt.bit();
    let a = Q::open(&mut e, "127.0.0.1");
    assert_eq!(e.session_stages(a.handle) & (end | rcpt), 0);
    let b = Q::open(&mut e, "10.1.1.1");
    assert_eq!(e.session_stages(b.handle) & (end | rcpt), end | rcpt);
    // The engine as a whole still asks about both.
    assert_eq!(e.stages() & (end | rcpt), end | rcpt);
    // A new set: every session's stages are worked out again.
    let before = e.generation();
    e.install(spec::parse_file("[[rule]]\nstage = \"end\"\ndrop = true\n").unwrap())
        .unwrap();
    assert_ne!(e.generation(), before);
    assert_eq!(e.session_stages(a.handle) & (end | rcpt), end);
    assert_eq!(a.ask(&mut e, Stage::EndOfData, "", 1).act, Act::Drop);
}

mod interest {
    use super::*;
    use proptest::prelude::*;
    use std::fmt::Write as _;

    /// A pattern cut from `text` (so that it often matches), or `random`:
    /// kind 0 exact, 1 `head*`, 2 `*tail`, 3 `head*tail`, 4 `random`.
    fn cut(text: &str, kind: u8, i: usize, j: usize, random: &str) -> String {
        let (i, j) = (i.min(text.len()), j.min(text.len()));
        let (i, j) = (i.min(j), i.max(j));
        match kind {
            0 => text.to_string(),
            1 => format!("{}*", &text[..i]),
            2 => format!("*{}", &text[j..]),
            3 => format!("{}*{}", &text[..i], &text[j..]),
            _ => random.to_string(),
        }
    }

    proptest! {
        /// The shape filter sessions read before asking (and the engine
        /// uses to pick candidates) never hides a command the rule's
        /// matchers accept: the engine acts exactly when they match, and
        /// then the interest says "ask".
        #[test]
        fn never_hides_a_match(
            arg in "[abAB@.]{0,8}",
            kinds in (0u8..6, 0u8..6),
            cuts in (0usize..9, 0usize..9, 0usize..9, 0usize..9),
            random in ("[ab@.*?]{0,6}", "[ab.*]{0,4}"),
            stage in prop_oneof![
                Just(("helo", Stage::Helo)),
                Just(("mail", Stage::Mail)),
                Just(("rcpt", Stage::Rcpt)),
            ],
            upper in any::<bool>(),
        ) {
            let lower = arg.to_ascii_lowercase();
            let source = if upper { arg.to_ascii_uppercase() } else { lower.clone() };
            let domain_of = lower.rsplit('@').next().unwrap_or_default().to_string();
            let mut text = format!("[[rule]]\nstage = \"{}\"\nreply = \"550 5.7.1 no\"\n", stage.0);
            // Kind 5: no pattern of that sort at all.
            if kinds.0 < 5 {
                let a = cut(&source, kinds.0, cuts.0, cuts.1, &random.0);
                let _ = writeln!(text, "address = \"{a}\"");
            }
            if kinds.1 < 5 {
                let d = cut(&domain_of, kinds.1, cuts.2, cuts.3, &random.1);
                let _ = writeln!(text, "domain = \"{d}\"");
            }
            let mut e = engine(&text);
            let q = Q::open(&mut e, "127.0.0.1");
            let live = e.session_rules(q.handle);
            let interest = e.interest().expect("interest");
            // The oracle: the rule's own matchers, no filter in the way.
            let rule = &e.set().rules[0];
            let query = Query {
                id: 1,
                handle: q.handle,
                stage: stage.1,
                arg: arg.as_bytes(),
                sender: b"",
                peer: q.peer,
                transaction: 1,
                now: q.now,
            };
            let matched = matches(rule, &query, 1);
            let acted = q.ask(&mut e, stage.1, &arg, 1) != Decision::PROCEED;
            prop_assert_eq!(acted, matched, "{} / {}", text, arg);
            if matched {
                prop_assert!(interest.wants(stage.1, arg.as_bytes(), live), "{text} / {arg}");
            }
        }
    }

    #[test]
    fn turns_away_arguments_of_the_wrong_shape() {
        let e = engine(
            "[[rule]]\nstage = \"rcpt\"\naddress = \"slow-*@example.test\"\nreply = \"450\"\n\
             [[rule]]\nstage = \"rcpt\"\ndomain = \"*.invalid\"\nreply = \"550\"\n\
             [[rule]]\nstage = \"mail\"\nclient = \"10.0.0.0/8\"\nreply = \"451\"\n",
        );
        let i = e.interest().expect("interest");
        let rcpt = |a: &str| i.wants(Stage::Rcpt, a.as_bytes(), u64::MAX);
        assert!(rcpt("SLOW-1@example.TEST"));
        assert!(rcpt("x@y.invalid"));
        assert!(!rcpt("sink1@example.test"), "second byte differs");
        assert!(!rcpt("b@example.test"), "first and last bytes differ");
        assert!(!rcpt(""));
        // A rule with only a client matcher fits any argument, unless the
        // session's client rules it out.
        assert!(i.wants(Stage::Mail, b"s@x", u64::MAX));
        assert!(!i.wants(Stage::Mail, b"s@x", !(1 << 2)));
        assert!(!i.wants(Stage::Data, b"", u64::MAX));
    }
}
