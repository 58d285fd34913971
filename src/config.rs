//! Command-line configuration (clap) and its validation. No globals: `main`
//! builds one [`Config`] and hands the parts to the reactor and the protocol.

use crate::proto::server::{Settings, Timeouts};
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// What to do with a bare LF inside DATA (RFC 5321 2.3.8, 4.1.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BareLf {
    /// Keep it as an ordinary body byte (it never ends a line or the data).
    Accept,
    /// Refuse the message with 550 5.5.2 once it has been read.
    Reject,
}

/// smtpsink: an SMTP sink that accepts mail as fast as the machine allows,
/// discards it, and reports exactly what happened.
///
/// Example: `smtpsink --listen 127.0.0.1:2525 --listen [::1]:2525 --stats-interval 1`
#[derive(Debug, Clone, Parser)]
#[command(name = "smtpsink", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on, IP:PORT (repeat for several; IPv6 as `[::1]:2525`).
    /// Never resolved through DNS.
    #[arg(
        long = "listen",
        short = 'l',
        value_name = "IP:PORT",
        default_value = "127.0.0.1:2525"
    )]
    pub listen: Vec<SocketAddr>,

    /// Host name used in the greeting, HELO/EHLO and 421 replies.
    #[arg(long, default_value = "localhost")]
    pub hostname: String,

    /// Most simultaneous connections; past it, new ones wait in the backlog.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Listen backlog (the kernel may cap it at net.core.somaxconn).
    #[arg(long, default_value_t = 1024)]
    pub backlog: i32,

    /// Largest message body accepted, in octets; advertised by SIZE, larger ones get 552 5.3.4.
    /// At least 1: `SIZE 0` would mean "no limit" (RFC 1870).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 64 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_message_size: u64,

    /// Recipients per transaction; the next one gets 452 4.5.3 (RFC 5321 asks for at least 100).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(100..))]
    pub max_recipients: u32,

    /// Longest command line in octets, CRLF included (RFC 5321: 512; MAIL/RCPT get 512 more
    /// for their extension parameters). Longer lines get 500 5.5.2.
    #[arg(long, value_name = "BYTES", default_value_t = 512, value_parser = clap::value_parser!(u32).range(512..=65536))]
    pub max_line_length: u32,

    /// What to do with a bare LF inside message data.
    #[arg(long, value_enum, default_value_t = BareLf::Accept)]
    pub bare_lf: BareLf,

    /// Idle timeout in seconds: nothing received and no reply taken for this
    /// long, then 421 4.4.2 and close (RFC 5321 4.5.3.2 suggests 300).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    /// A command line must be complete this many seconds after its first
    /// byte, however steadily it trickles in; then 421 4.4.2 and close.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub command_timeout: Duration,

    /// Message content (DATA, BDAT chunks) must arrive at least this fast,
    /// in octets per second over each --data-window; slower: 421 4.4.2 and
    /// close. 0 turns the check off.
    #[arg(long, value_name = "BYTES", default_value_t = 500)]
    pub data_min_rate: u64,

    /// The window, in seconds, over which --data-min-rate is measured.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub data_window: Duration,

    /// Most simultaneous connections from one client address; past it a new
    /// one gets 421 4.7.0 and is closed. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections_per_client: u32,

    /// On SIGINT/SIGTERM, seconds a message in progress may take to finish before 421.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub grace: u64,

    /// Check smtpload's integrity headers (sequence number, body CRC) in every
    /// message and count intact, corrupted, duplicated and lost messages.
    #[arg(long)]
    pub verify: bool,

    /// Keep every accepted message as a file in this Maildir (tmp/, new/,
    /// cur/ are created); the 250 is sent once the file is in new/.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["verify", "run_summary", "transit_log"])]
    pub maildir: Option<std::path::PathBuf>,

    /// With --maildir: send the 250 only once the message and its directory
    /// entry are durable; messages that finish together share one sync.
    #[arg(long, requires = "maildir")]
    pub fsync: bool,

    /// With --maildir: keep at most N messages in new/; each message stored
    /// past it deletes the oldest one there (for long soak runs).
    #[arg(long, value_name = "N", requires = "maildir", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stored: Option<u64>,

    /// smtpload's run summary (its `--summary FILE`); implies --verify. The
    /// sink reads it once it appears, counts every message the run
    /// acknowledged that never arrived, and stops by itself when all have
    /// arrived or none came for --linger seconds (the missing ones are then
    /// lost; stopped earlier by a signal, they count as in flight).
    #[arg(long, value_name = "FILE")]
    pub run_summary: Option<std::path::PathBuf>,

    /// With --run-summary: how long to wait, after the summary appeared and
    /// after the last message of the run arrived, before the missing ones
    /// count as lost.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub linger: Duration,

    /// Write the final statistics (and the verify figures) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,

    /// Write the transit latency of verified messages (smtpload's send stamp
    /// to end of data here) every second to FILE, an `HdrHistogram`
    /// interval log; implies --verify.
    #[arg(long, value_name = "FILE")]
    pub transit_log: Option<std::path::PathBuf>,

    /// After a turn with work, poll this many times without sleeping before
    /// the loop sleeps: a few microseconds of CPU per turn that spare clients
    /// the cost of waking the server for their next request. Raises msgs/s
    /// with lock-step clients on loopback, at some CPU per message.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub spin_polls: u32,

    /// Print one statistics line to stderr every SECS seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,
}

impl Config {
    /// The protocol settings this configuration implies.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::new(
            &self.hostname,
            self.max_message_size,
            self.max_recipients,
            self.max_line_length as usize,
        );
        s.reject_bare_lf = self.bare_lf == BareLf::Reject;
        s.timeouts = Timeouts {
            idle: self.timeout(),
            command: self.command_timeout,
            data_min_rate: self.data_min_rate,
            data_window: self.data_window,
        };
        s
    }

    /// The idle timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    /// How long messages in progress may take at shutdown.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace)
    }

    /// Whether the verify sink is wanted (asked for, or implied).
    pub fn verifying(&self) -> bool {
        self.verify || self.run_summary.is_some() || self.transit_log.is_some()
    }

    /// How often to print a statistics line, if at all.
    pub fn stats_interval(&self) -> Option<Duration> {
        (self.stats_interval > 0).then(|| Duration::from_secs(self.stats_interval))
    }

    /// The defaults, for tests and embedding.
    pub fn default_for(listen: SocketAddr) -> Self {
        let mut c = Self::parse_from(["smtpsink"]);
        c.listen = vec![listen];
        c
    }
}

/// Seconds, decimals allowed (`0.5`), more than zero.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v <= 1e9) {
        return Err(format!("{s} must be more than 0 and at most 1e9 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = Config::try_parse_from(["smtpsink"]).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
        assert_eq!(c.settings().max_line, 512);
        assert!(Config::try_parse_from(["smtpsink", "--max-recipients", "99"]).is_err());
        assert!(Config::try_parse_from(["smtpsink", "--listen", "localhost:25"]).is_err());
        let c = Config::try_parse_from([
            "smtpsink",
            "-l",
            "[::1]:0",
            "-l",
            "127.0.0.1:0",
            "--bare-lf",
            "reject",
        ])
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert!(c.settings().reject_bare_lf);
        let t = Config::try_parse_from(["smtpsink"])
            .unwrap()
            .settings()
            .timeouts;
        assert_eq!(t, Timeouts::default());
        let c = Config::try_parse_from([
            "smtpsink",
            "--command-timeout",
            "0.5",
            "--data-window",
            "2",
            "--data-min-rate",
            "0",
            "--timeout",
            "7",
        ])
        .unwrap();
        let t = c.settings().timeouts;
        assert_eq!(t.command, Duration::from_millis(500));
        assert_eq!(t.data_window, Duration::from_secs(2));
        assert_eq!((t.data_min_rate, t.idle), (0, Duration::from_secs(7)));
        for bad in ["0", "-1", "x", "nan", "inf"] {
            assert!(
                Config::try_parse_from(["smtpsink", "--command-timeout", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
