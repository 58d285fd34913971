//! LMTP (RFC 2033), XCLIENT and XFORWARD (Postfix): exact transcripts, each
//! also split at every byte.

use super::*;

const QUEUED: &str = "250 2.0.0 Ok: queued\r\n";
const XCLIENT_LINE: &str =
    "250-XCLIENT NAME REVERSE_NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n";
const XFORWARD_LINE: &str = "250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE\r\n";

fn lmtp_harness(sink: Recorder) -> Harness {
    let mut h = Harness::new(sink);
    h.session.speak_lmtp();
    h
}

fn lmtp(input: &str, want: &str) -> Outcome {
    transcript_in(
        &|| lmtp_harness(Recorder::default()),
        &settings(),
        input.as_bytes(),
        want,
    )
}

const ENVELOPE: &str =
    "LHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nRCPT TO:<y@d.test>\r\n\
RCPT TO:<z@d.test>\r\n";
const ENVELOPE_REPLIES: &str = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n";

#[test]
fn lmtp_greets_as_lmtp() {
    let s = settings();
    let mut h = lmtp_harness(Recorder::default());
    h.with(|session, cx| session.start(&s, cx));
    assert_eq!(h.text(), "220 sink.test LMTP smtpsink\r\n");
}

#[test]
fn lmtp_answers_every_recipient_after_the_data() {
    let o = lmtp(
        &format!("{ENVELOPE}DATA\r\nbody\r\n.\r\nQUIT\r\n"),
        &format!(
            "{EHLO}{ENVELOPE_REPLIES}354 End data with <CR><LF>.<CR><LF>\r\n\
{QUEUED}{QUEUED}{QUEUED}221 2.0.0 Bye\r\n"
        ),
    );
    assert_eq!(o.sink.bodies, [b"body\r\n".to_vec()], "stored once");
    let c = o.stats.counters;
    assert_eq!((c.messages, c.recipients), (1, 3));
}

#[test]
fn lmtp_last_bdat_chunk_is_answered_per_recipient() {
    lmtp(
        &format!("{ENVELOPE}BDAT 3\r\nabcBDAT 2 LAST\r\nde"),
        &format!("{EHLO}{ENVELOPE_REPLIES}250 2.0.0 3 octets received\r\n{QUEUED}{QUEUED}{QUEUED}"),
    );
}

#[test]
fn lmtp_refuses_a_too_big_message_for_every_recipient() {
    let big = "x".repeat(1100);
    let too_big = "552 5.3.4 Error: message size exceeds fixed limit\r\n";
    lmtp(
        &format!(
            "LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@d>\r\nRCPT TO:<y@d>\r\nDATA\r\n{big}\r\n.\r\n"
        ),
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n{too_big}{too_big}"
        ),
    );
}

#[test]
fn helo_and_ehlo_are_not_lmtp_and_lhlo_is_not_smtp() {
    let unknown = "500 5.5.2 Error: command not recognized\r\n";
    lmtp(
        "HELO c\r\nEHLO c\r\nMAIL FROM:<a@b>\r\n",
        &format!("{unknown}{unknown}503 5.5.1 Error: send HELO/EHLO first\r\n"),
    );
    transcript(
        "LHLO c\r\nHELO c\r\n",
        &format!("{unknown}250 sink.test\r\n"),
    );
    // RFC 2033 4.2: DATA without a successful RCPT fails with 503.
    lmtp(
        "LHLO c\r\nMAIL FROM:<a@b>\r\nDATA\r\n",
        &format!("{EHLO}250 2.1.0 Ok\r\n503 5.5.1 Error: need RCPT command\r\n"),
    );
}

/// Rules at the end of data answer LMTP recipients apart.
const PER_RECIPIENT: &str = "[[rule]]\nstage = \"end\"\naddress = \"full@*\"\n\
reply = \"452 4.2.2 Mailbox full\"\n\
[[rule]]\nstage = \"end\"\naddress = \"gone@*\"\nreply = \"550 5.1.1 No such user\"\n";

fn ruled_lmtp(input: &str, want: &str) -> Outcome {
    transcript_in(
        &|| {
            let mut h = ruled(PER_RECIPIENT, Recorder::default());
            h.session.speak_lmtp();
            h
        },
        &settings(),
        input.as_bytes(),
        want,
    )
}

#[test]
fn rules_answer_single_recipients_at_the_end() {
    let o = ruled_lmtp(
        "LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<full@d>\r\nRCPT TO:<ok@d>\r\nRCPT TO:<gone@d>\r\n\
DATA\r\nhi\r\n.\r\n",
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n\
452 4.2.2 Mailbox full\r\n{QUEUED}550 5.1.1 No such user\r\n"
        ),
    );
    assert_eq!(o.sink.bodies, [b"hi\r\n".to_vec()], "kept for ok@d");
    assert_eq!(o.stats.counters.messages, 1);
    // Decided when the content began: the sink keeps ok@d alone.
    assert_eq!(
        o.sink.events,
        [
            "mail <a@b>",
            "rcpt <full@d>",
            "rcpt <ok@d>",
            "rcpt <gone@d>",
            "refused rcpt 2",
            "refused rcpt 0",
            "begin",
            "end"
        ]
    );
}

#[test]
fn a_message_every_recipient_refused_is_not_kept() {
    let o = ruled_lmtp(
        "LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<gone@d>\r\nRCPT TO:<full@d>\r\nDATA\r\nhi\r\n.\r\n\
MAIL FROM:<a@b>\r\nRCPT TO:<ok@d>\r\nDATA\r\nagain\r\n.\r\n",
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n550 5.1.1 No such user\r\n452 4.2.2 Mailbox full\r\n\
250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n{QUEUED}"
        ),
    );
    assert_eq!(o.sink.bodies, [b"again\r\n".to_vec()]);
    assert_eq!(
        o.sink.events[..7],
        [
            "mail <a@b>",
            "rcpt <gone@d>",
            "rcpt <full@d>",
            "refused rcpt 1",
            "refused rcpt 0",
            "begin",
            "abort"
        ]
    );
    assert_eq!(o.stats.counters.messages, 1);
}

#[test]
fn magic_recipients_answer_for_themselves_in_lmtp() {
    transcript_in(
        &|| {
            let mut h = ruled("magic_addresses = true\n", Recorder::default());
            h.session.speak_lmtp();
            h
        },
        &settings(),
        b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<ok@d>\r\nRCPT TO:<datareject@d>\r\nDATA\r\nhi\r\n.\r\n",
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n{QUEUED}554 5.0.0 Refused by magic address datareject554\r\n"
        ),
    );
}

#[test]
fn a_pending_verdict_is_answered_per_recipient() {
    let s = settings();
    let sink = Recorder {
        verdict: Some(Verdict::Pending),
        ..Recorder::default()
    };
    let mut h = lmtp_harness(sink);
    let input = b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@d>\r\nRCPT TO:<y@d>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n";
    let n = h.feed(&s, input);
    assert_eq!(&input[n..], b"NOOP\r\n", "held behind the verdict");
    h.out.clear();
    h.with(|session, cx| {
        session.complete(&s, Verdict::Rejected(ReplyId::InsufficientStorage), cx);
    });
    let full = "452 4.3.1 Error: insufficient system storage\r\n";
    assert_eq!(h.text(), format!("{full}{full}"));
}

fn forwarding() -> Settings {
    let mut s = settings();
    s.set_forwarding(true, true);
    s
}

fn trusted(sink: Recorder) -> Harness {
    let mut h = Harness::new(sink);
    h.session.trust();
    h
}

fn identity() -> Recorder {
    Recorder {
        identity: true,
        ..Recorder::default()
    }
}

#[test]
fn xclient_and_xforward_are_offered_to_trusted_clients_only() {
    let s = forwarding();
    let trusted_ehlo = format!(
        "{}{XCLIENT_LINE}{XFORWARD_LINE}",
        EHLO.replace("250 HELP", "250-HELP")
    );
    transcript_in(
        &|| trusted(Recorder::default()),
        &s,
        b"EHLO c\r\n",
        &trusted_ehlo,
    );
    transcript_with(&s, b"EHLO c\r\n", EHLO);
    let refused = "550 5.7.0 Error: insufficient authorization\r\n";
    transcript_with(
        &s,
        b"XCLIENT ADDR=10.0.0.1\r\nXFORWARD ADDR=10.0.0.1\r\n",
        &format!("{refused}{refused}"),
    );
    // Not offered at all: not implemented, whoever asks.
    let nothing = "502 5.5.1 Error: command not implemented\r\n";
    transcript_in(
        &|| trusted(Recorder::default()),
        &settings(),
        b"XCLIENT ADDR=10.0.0.1\r\nXFORWARD ADDR=10.0.0.1\r\n",
        &format!("{nothing}{nothing}"),
    );
}

#[test]
fn xclient_starts_the_session_over_as_the_named_client() {
    let o = transcript_in(
        &|| trusted(identity()),
        &forwarding(),
        b"EHLO proxy\r\nXCLIENT ADDR=10.1.2.3 PORT=2525 NAME=mx.example HELO=real+2Eexample\r\n\
MAIL FROM:<a@b>\r\nHELO proxy\r\nMAIL FROM:<a@b>\r\n",
        &format!(
            "{}{XCLIENT_LINE}{XFORWARD_LINE}220 sink.test ESMTP smtpsink\r\n\
503 5.5.1 Error: send HELO/EHLO first\r\n250 sink.test\r\n250 2.1.0 Ok\r\n",
            EHLO.replace("250 HELP", "250-HELP")
        ),
    );
    assert_eq!(
        o.sink.events,
        [
            "hello proxy ESMTP",
            "connected 10.1.2.3:2525",
            "client session 10.1.2.3 mx.example real.example",
            "hello real.example SMTP",
            "mail <a@b>"
        ]
    );
}

#[test]
fn xclient_errors() {
    let s = forwarding();
    transcript_in(
        &|| trusted(Recorder::default()),
        &s,
        b"XCLIENT\r\nXCLIENT FOO=1\r\nXCLIENT ADDR=1.2.3\r\nHELO c\r\nMAIL FROM:<a@b>\r\n\
XCLIENT ADDR=10.0.0.1\r\nXFORWARD ADDR=10.0.0.1\r\nXFORWARD IDENT\r\n",
        "501 5.5.4 Syntax: XCLIENT attribute=value ...\r\n\
501 5.5.4 Bad XCLIENT attribute name\r\n501 5.5.4 Syntax: XCLIENT attribute=value ...\r\n\
250 sink.test\r\n250 2.1.0 Ok\r\n\
503 5.5.1 Error: MAIL transaction in progress\r\n503 5.5.1 Error: MAIL transaction in progress\r\n\
503 5.5.1 Error: MAIL transaction in progress\r\n",
    );
}

#[test]
fn rules_see_the_xclient_address() {
    let s = forwarding();
    transcript_in(
        &|| {
            let mut h = ruled(
                "[[rule]]\nstage = \"mail\"\nclient = \"10.0.0.0/8\"\nreply = \"550 5.7.1 not you\"\n",
                Recorder::default(),
            );
            h.session.trust();
            h
        },
        &s,
        b"HELO c\r\nMAIL FROM:<a@b>\r\nRSET\r\nXCLIENT ADDR=10.9.8.7\r\nHELO c\r\nMAIL FROM:<a@b>\r\n",
        "250 sink.test\r\n250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n220 sink.test ESMTP smtpsink\r\n\
250 sink.test\r\n550 5.7.1 not you\r\n",
    );
}

#[test]
fn xforward_names_the_client_of_the_next_transaction_only() {
    let s = forwarding();
    let msg = "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n";
    let o = transcript_in(
        &|| {
            let mut h = ruled(
                "[[rule]]\nstage = \"end\"\nclient = \"10.0.0.0/8\"\nreply = \"550 5.7.1 not you\"\n",
                identity(),
            );
            h.session.trust();
            h
        },
        &s,
        format!(
            "HELO filter\r\nXFORWARD ADDR=10.1.1.1 NAME=orig.example\r\n\
XFORWARD HELO=orig PROTO=ESMTP\r\n{msg}{msg}"
        )
        .as_bytes(),
        "250 sink.test\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n\
250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n550 5.7.1 not you\r\n\
250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued\r\n",
    );
    assert_eq!(
        o.sink.events,
        [
            "hello filter SMTP",
            "client tx 10.1.1.1 orig.example orig",
            "mail <a@b>",
            "rcpt <c@d>",
            "begin",
            "abort",
            "mail <a@b>",
            "rcpt <c@d>",
            "begin",
            "end"
        ]
    );
}

#[test]
fn a_chunk_that_is_not_the_last_gets_one_reply_even_in_lmtp() {
    // Refused by a rule: one reply, and the next command is in step.
    transcript_in(
        &|| {
            let mut h = ruled(
                "[[rule]]\nstage = \"bdat\"\nreply = \"552 5.3.4 no chunks\"\n",
                Recorder::default(),
            );
            h.session.speak_lmtp();
            h
        },
        &settings(),
        b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@d>\r\nRCPT TO:<y@d>\r\nBDAT 5\r\nhelloNOOP\r\n",
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n552 5.3.4 no chunks\r\n\
250 2.0.0 Ok\r\n"
        ),
    );
    // Too big: the same.
    let big = "x".repeat(1100);
    lmtp(
        &format!("LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@d>\r\nRCPT TO:<y@d>\r\nBDAT 1100\r\n{big}NOOP\r\n"),
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n\
552 5.3.4 Error: message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n"
        ),
    );
}

#[test]
fn a_421_for_one_recipient_refuses_the_ones_after_it() {
    let o = transcript_in(
        &|| {
            let mut h = ruled(
                "[[rule]]\nstage = \"end\"\naddress = \"b@*\"\nreply = \"421 4.3.0 go away\"\n",
                Recorder::default(),
            );
            h.session.speak_lmtp();
            h
        },
        &settings(),
        b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n",
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n{QUEUED}421 4.3.0 go away\r\n"
        ),
    );
    // Kept for a@x alone: b@x and c@x were never answered 250.
    assert_eq!(
        o.sink.events,
        [
            "mail <s@x>",
            "rcpt <a@x>",
            "rcpt <b@x>",
            "rcpt <c@x>",
            "refused rcpt 2",
            "refused rcpt 1",
            "begin",
            "end"
        ]
    );
    assert_eq!(o.state, State::Closed);
}

#[test]
fn rules_for_a_network_see_xforwards_address_at_every_stage() {
    transcript_in(
        &|| {
            let mut h = ruled(
                "[[rule]]\nstage = \"rcpt\"\nclient = \"10.0.0.0/8\"\nreply = \"550 5.7.1 not from there\"\n",
                Recorder::default(),
            );
            h.session.trust();
            h
        },
        &forwarding(),
        b"HELO f\r\nXFORWARD ADDR=10.0.0.5\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRSET\r\n\
MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
        "250 sink.test\r\n250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n550 5.7.1 not from there\r\n\
250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n",
    );
}

#[test]
fn xclient_unavailable_forgets_the_address_and_the_login() {
    let o = transcript_in(
        &|| trusted(identity()),
        &forwarding(),
        b"XCLIENT ADDR=10.0.0.1 LOGIN=alice\r\nXCLIENT ADDR=[UNAVAILABLE] LOGIN=[UNAVAILABLE]\r\nEHLO y\r\n",
        &format!(
            "220 sink.test ESMTP smtpsink\r\n220 sink.test ESMTP smtpsink\r\n{}{XCLIENT_LINE}{XFORWARD_LINE}",
            EHLO.replace("250 HELP", "250-HELP")
        ),
    );
    assert_eq!(
        o.sink.events,
        [
            "connected 10.0.0.1:0",
            "client session 10.0.0.1 - -",
            "connected 0.0.0.0:0",
            "client session - - -",
            "hello y ESMTP"
        ]
    );
}

/// An AUTH response too long to keep gets the same 500 whether it came in
/// one read or across several (found by the fuzzer: whole, it got 501).
#[test]
fn an_over_long_auth_response_gets_one_answer_however_it_arrives() {
    let mut s = settings();
    s.set_security(Security {
        starttls: false,
        require_tls: false,
        auth: Some(AuthOffer {
            plaintext: true,
            users: std::sync::Arc::new(auth::Users::anyone()),
        }),
    });
    let long = "x".repeat(auth::MAX_LINE + 10);
    let o = transcript_with(
        &s,
        format!("AUTH LOGIN\r\n{long}\r\nNOOP\r\n").as_bytes(),
        "503 5.5.1 Error: send HELO/EHLO first\r\n500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n",
    );
    assert_eq!(o.state, State::Command);
    let o = transcript_with(
        &s,
        format!("EHLO c\r\nAUTH LOGIN\r\n{long}\r\nNOOP\r\n").as_bytes(),
        &format!(
            "{}334 VXNlcm5hbWU6\r\n500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n",
            String::from_utf8_lossy(s.replies.text(ReplyId::Ehlo))
        ),
    );
    assert_eq!(o.state, State::Command);
}
