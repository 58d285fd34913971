//! Prometheus text exposition (format 0.0.4) of the server's counters,
//! rendered on request from what the loop counts anyway: scraping costs the
//! per-message path nothing.
//!
//! Owns: the metric names (`smtpsink_*`), their help texts and types, and
//! the cumulative buckets of latency histograms (from hdrhistogram, in
//! seconds, with the exact sum where the caller keeps one).

use crate::rules::limits::Kind;
use crate::rules::Engine;
use crate::stats::Stats;
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::time::Duration;

/// The same bounds as exposition labels, in seconds (formatting floats on
/// every scrape showed up in its profile).
const BUCKET_LABELS: [&str; 18] = [
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
];

/// Bucket bounds of latency histograms, in microseconds (exposed in seconds).
pub const BUCKETS_US: [u64; 18] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// A label value escaped as the format asks (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        if value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = writeln!(self.out, " {value:.0}");
        } else {
            let _ = writeln!(self.out, " {value}");
        }
    }

    /// A counter without labels (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.head(name, help, "counter");
        self.sample(name, &[], value as f64);
    }

    /// A counter with one label over several values.
    pub fn counters(&mut self, name: &str, help: &str, label: &str, values: &[(String, u64)]) {
        self.head(name, help, "counter");
        for (v, n) in values {
            self.sample(name, &[(label, v)], *n as f64);
        }
    }

    /// A gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.head(name, help, "gauge");
        self.sample(name, &[], value);
    }

    /// A histogram of microsecond values, exposed in seconds: cumulative
    /// buckets, `+Inf`, count and sum (`sum_us`: the exact sum when known,
    /// else the histogram's mean times its count). Buckets are as exact as
    /// the histogram: 3 significant digits, so a value within 0.1% of a
    /// bound may fall on either side of it.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram<u64>, sum_us: Option<u64>) {
        self.head(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        // Each bucket sums only the counts between the previous bound and
        // its own (a tight loop over the histogram's array), and nothing
        // past the largest value recorded is walked: a scrape costs the
        // width of what was recorded, not a walk per bucket.
        let (max, mut below, mut low) = (h.max(), 0u64, 0u64);
        for (top, le) in BUCKETS_US.into_iter().zip(BUCKET_LABELS) {
            if !h.is_empty() && low <= top && low <= max {
                let high = h.highest_equivalent(top.min(max));
                below += h.count_between(low, high);
                low = high.saturating_add(1);
            }
            self.sample(&bucket, &[("le", le)], below as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.len() as f64);
        let sum = sum_us.map_or_else(|| h.mean() * h.len() as f64, |s| s as f64);
        self.sample(&format!("{name}_sum"), &[], sum / 1e6);
        self.sample(&format!("{name}_count"), &[], h.len() as f64);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The server's metrics: connections, transactions, messages, recipients,
/// bytes, replies by code, rule hits, rate limits, transaction latency.
pub fn server(x: &mut Exposition, stats: &Stats, rules: Option<&Engine>, uptime: Duration) {
    let c = &stats.counters;
    x.gauge(
        "smtpsink_uptime_seconds",
        "Seconds since the server started.",
        uptime.as_secs_f64(),
    );
    x.counter(
        "smtpsink_connections_total",
        "Connections accepted.",
        c.connections,
    );
    x.gauge(
        "smtpsink_connections_open",
        "Connections open now.",
        c.connections_open as f64,
    );
    x.counter(
        "smtpsink_connections_refused_total",
        "Connections answered 421 at accept for the per-client connection limit.",
        c.connections_refused,
    );
    x.counter(
        "smtpsink_proxy_refused_total",
        "Connections closed unanswered with --proxy-protocol: untrusted, or no valid PROXY header in time.",
        c.proxy_refused,
    );
    x.counters(
        "smtpsink_timeouts_total",
        "Sessions closed for a timeout, by kind.",
        "kind",
        &[
            (
                "idle".into(),
                c.timeouts - c.command_timeouts - c.data_rate_timeouts,
            ),
            ("command".into(), c.command_timeouts),
            ("data_rate".into(), c.data_rate_timeouts),
        ],
    );
    x.counter(
        "smtpsink_transactions_total",
        "Transactions begun (MAIL accepted).",
        c.transactions,
    );
    x.counters(
        "smtpsink_messages_total",
        "Messages that got their final reply, by outcome (dropped: 250 sent, kept nowhere, by a rule).",
        "outcome",
        &[
            ("accepted".into(), c.messages),
            ("rejected".into(), c.messages_rejected),
            ("dropped".into(), c.messages_dropped),
        ],
    );
    x.counter(
        "smtpsink_recipients_total",
        "Recipients accepted.",
        c.recipients,
    );
    x.counter(
        "smtpsink_body_bytes_total",
        "Body octets of accepted messages.",
        c.body_bytes,
    );
    x.counters(
        "smtpsink_network_bytes_total",
        "Octets read from and written to clients.",
        "direction",
        &[("in".into(), c.io.bytes_in), ("out".into(), c.io.bytes_out)],
    );
    let by_code: Vec<(String, u64)> = stats
        .replies_by_code()
        .into_iter()
        .map(|(code, n)| (code.to_string(), n))
        .collect();
    x.counters(
        "smtpsink_replies_total",
        "Replies sent, by code.",
        "code",
        &by_code,
    );
    x.histogram(
        "smtpsink_transaction_duration_seconds",
        "Time from MAIL accepted to the final reply of the message.",
        &stats.latency,
        Some(stats.latency_sum_us),
    );
    tls_metrics(x, stats);
    if let Some(e) = rules {
        rule_metrics(x, e);
    }
}

/// TLS handshakes (by version, by cipher, resumed), failures by class,
/// handshake latency; AUTH results.
fn tls_metrics(x: &mut Exposition, stats: &Stats) {
    let t = &stats.tls;
    let pairs = |m: &std::collections::BTreeMap<&'static str, u64>| -> Vec<(String, u64)> {
        m.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
    };
    x.counters(
        "smtpsink_tls_handshakes_total",
        "TLS handshakes completed, by protocol version.",
        "version",
        &pairs(&t.versions),
    );
    x.counters(
        "smtpsink_tls_cipher_handshakes_total",
        "TLS handshakes completed, by cipher suite.",
        "cipher",
        &pairs(&t.ciphers),
    );
    x.counter(
        "smtpsink_tls_resumed_total",
        "TLS handshakes that resumed a session.",
        t.resumed,
    );
    let failures: Vec<(String, u64)> = crate::net::TlsFailure::ALL
        .iter()
        .map(|f| {
            (
                f.label().to_string(),
                t.failures.get(f.label()).copied().unwrap_or(0),
            )
        })
        .collect();
    x.counters(
        "smtpsink_tls_failures_total",
        "TLS connections that failed, by class (abandoned: the handshake never finished).",
        "reason",
        &failures,
    );
    x.histogram(
        "smtpsink_tls_handshake_duration_seconds",
        "TLS handshake time (implicit TLS: from accept; STARTTLS: from the 220).",
        &t.latency,
        Some(t.latency_sum_us),
    );
    let (ok, failed) = stats.auth();
    x.counters(
        "smtpsink_auth_total",
        "AUTH exchanges, by result.",
        "result",
        &[("ok".into(), ok), ("failed".into(), failed)],
    );
}

/// The rules' metrics: hits per rule, rate limits, greylisting, magic.
fn rule_metrics(x: &mut Exposition, e: &Engine) {
    {
        let hits: Vec<(String, u64)> = e.hits().map(|(n, h)| (n.to_string(), h)).collect();
        x.counters(
            "smtpsink_rule_hits_total",
            "Times each rule of the set in force fired.",
            "rule",
            &hits,
        );
        let k = e.counts();
        x.head(
            "smtpsink_rate_limited_total",
            "Commands refused by a rate limit, by what it counts and its scope.",
            "counter",
        );
        for (scope, row) in ["server", "client"].iter().zip(k.rate_limited) {
            for (kind, n) in Kind::ALL.iter().zip(row) {
                x.sample(
                    "smtpsink_rate_limited_total",
                    &[("limit", kind.name()), ("scope", scope)],
                    n as f64,
                );
            }
        }
        x.counters(
            "smtpsink_greylist_total",
            "Greylisting decisions: deferred first tries and retries that passed.",
            "result",
            &[
                ("deferred".into(), k.greylisted),
                ("passed".into(), k.greylist_passed),
            ],
        );
        x.counter(
            "smtpsink_magic_addresses_total",
            "Magic recipient addresses that acted.",
            k.magic,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::server::{Counts, Observer, Outcome};

    #[test]
    fn bucket_labels_are_the_bounds_in_seconds() {
        for (us, label) in BUCKETS_US.iter().zip(BUCKET_LABELS) {
            let secs: f64 = label.parse().unwrap();
            assert!((secs * 1e6 - *us as f64).abs() < 1e-6, "{label}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_exact_sum() {
        let mut s = Stats::new();
        s.message(Outcome::Accepted, 1, Duration::from_micros(80));
        s.message(Outcome::Accepted, 1, Duration::from_millis(3));
        s.message(Outcome::Dropped, 1, Duration::from_secs(60));
        s.counted(&Counts {
            transactions: 3,
            ..Counts::default()
        });
        let mut x = Exposition::new();
        server(&mut x, &s, None, Duration::from_secs(2));
        let t = x.finish();
        assert!(
            t.contains("smtpsink_transaction_duration_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("smtpsink_transaction_duration_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(t.contains("smtpsink_transaction_duration_seconds_bucket{le=\"30\"} 2\n"));
        assert!(t.contains("smtpsink_transaction_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(
            t.contains("smtpsink_transaction_duration_seconds_sum 60.00308\n"),
            "{t}"
        );
        assert!(t.contains("smtpsink_messages_total{outcome=\"dropped\"} 1\n"));
        assert!(t.contains("smtpsink_transactions_total 3\n"));
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
