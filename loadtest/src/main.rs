//! The `smtpload` binary: parse the command line, prepare the messages, run
//! the driver, print the report. Usage errors exit 2, failed runs 1.

use clap::{ArgGroup, Parser, Subcommand};
use smtpload::driver::{self, Lane, Options, Target, TlsOptions};
use smtpload::merge;
use smtpload::payload::{Payload, PayloadSpec};
use smtpload::report::{Results, RunInfo};
use smtpsink::net::tls::{self, Trust};
use smtpsink::proto::client::{ClientSettings, Credentials};
use smtpsink::proto::proxy;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const EXAMPLES: &str = "\
Examples:
  smtpload -c 50 -m 100000 127.0.0.1:2525
      50 connections, 100k messages of 1 KiB, pipelined when the server offers it
  smtpload -c 50 -m 100000 --no-pipelining 127.0.0.1:2525
      the same, lock-step (what Postfix's smtp-source does)
  smtpload -c 50 -m 20000 --per-connection 1 127.0.0.1:2525
      a new connection for every message
  smtpload -c 10 -d 30 --bdat --window 16 [::1]:2525
      BDAT, 16 whole transactions in flight per connection, for 30 s
  smtpload -c 20 -d 60 --rate 5000 --warmup 5 --json run.json --hist-log run.hlog 127.0.0.1:2525
      open loop at 5000 msg/s; latency measured from each message's due time
  smtpsink -l 127.0.0.1:2626 --run-summary run.sum --json sink.json &
  smtpload -c 20 -d 60 --rate 500 --summary run.sum 127.0.0.1:25
      through the MTA on port 25 to smtpsink: transit latency, lost/duplicated/corrupted
  smtpload -c 20000 -d 60 --threads 4 --bind 127.0.0.2,127.0.0.3 127.0.0.1:2525
      four event loops (threads), 5000 connections each, one report
  smtpload merge --json all.json host1.json host2.json
      one report from the --json reports (or --hist-log logs) of several generators
  smtpload -c 20 -m 20000 --starttls --insecure --auth user:pw 127.0.0.1:2525
      STARTTLS (any certificate), AUTH PLAIN, then the messages
  smtpload -c 50 -m 20000 --per-connection 1 --tls --insecure --no-resumption 127.0.0.1:4650
      implicit TLS, a full handshake for every message

Phases (latency; each counts only the server's own time for that phase):
  connect    connect() called -> connection established
  greeting   connection established -> 220 greeting
  ehlo       EHLO/HELO written -> its reply (after TLS: the second EHLO)
  tls        STARTTLS written (implicit TLS: connection established)
             -> handshake done
  auth       AUTH written -> 235 (LOGIN: the server's part of each round trip)
  envelope   MAIL -> 354 (DATA), or -> the last RCPT reply (BDAT)
  data       end of data (the final dot, or the BDAT LAST chunk) -> final reply
  message    MAIL -> final reply; open loop: from the message's due time
             (coordinated omission corrected)
  message-uncorrected  open loop only: MAIL -> final reply
A pipelined command's clock starts when the server could first read it: once
it was written and the reply before it had arrived. So an envelope written
together with the previous message's end of data is not charged the wait for
that message's final reply.";

/// smtpload: drives an SMTP server as hard as the machine allows (or at a
/// fixed rate) and reports throughput and latency per phase from HDR
/// histograms. One of --messages or --duration is required, so every run
/// ends by itself.
// A command line has flags; they are not a state machine in disguise.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Parser)]
#[command(
    name = "smtpload",
    version,
    about,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    group(ArgGroup::new("amount").required(true).args(["messages", "duration"]))
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,

    /// The server, HOST:PORT (e.g. 127.0.0.1:2525 or [`::1`]:2525) or
    /// unix:PATH (a UNIX socket); with several, connections go to each in
    /// turn.
    #[arg(value_name = "HOST:PORT|unix:PATH", required = true, num_args = 1..)]
    targets: Vec<String>,

    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,

    /// Independent event loops, each with its share of the connections,
    /// messages and rate; one report.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,

    /// Messages to send in all; the run ends when they are answered.
    #[arg(short = 'm', long)]
    messages: Option<u64>,

    /// Seconds to run; then in-flight messages finish and connections QUIT.
    #[arg(short = 'd', long, value_name = "SECS")]
    duration: Option<f64>,

    /// Message size in bytes, headers included (generated text with dot-led lines).
    #[arg(short = 's', long, value_name = "BYTES", default_value_t = 1024)]
    size: usize,

    /// Recipients per message.
    #[arg(short = 'r', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    recipients: u32,

    /// Messages per connection before it is closed and a new one opened
    /// (1: a new connection per message; 0: no limit); N-M draws each
    /// connection's number from that range.
    #[arg(long, value_name = "N|N-M", default_value = "0", value_parser = per_connection)]
    per_connection: RangeInclusive<u64>,

    /// Begin at this time, in seconds since the Unix epoch (as `date +%s`
    /// prints it), so that generators on several machines start together;
    /// an error if it passed more than a second ago.
    #[arg(long, value_name = "EPOCH_SECS", value_parser = start_time)]
    start_at: Option<std::time::SystemTime>,

    /// Connect from these local addresses, one connection each in turn
    /// (comma-separated, e.g. 127.0.0.2,127.0.0.3: many clients from one
    /// host, past per-address limits).
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    bind: Vec<std::net::IpAddr>,

    /// Speak as a proxy: start every connection with a PROXY protocol
    /// header (haproxy's version 1 text or version 2 binary) naming a
    /// client address from --source-cidr.
    #[arg(long, value_name = "v1|v2", value_parser = proxy_version)]
    proxy: Option<proxy::Version>,

    /// With --proxy: the client addresses claimed, one drawn per connection
    /// (default 192.0.2.0/24, or 2001:db8::/32 for an IPv6 server).
    // Help text, not rustdoc: an address is not code to quote.
    #[allow(clippy::doc_markdown)]
    #[arg(long, value_name = "CIDR", requires = "proxy")]
    source_cidr: Option<ipnet::IpNet>,

    /// Speak LMTP (RFC 2033): LHLO, and one final reply per accepted
    /// recipient (a message counts as delivered if one accepted it).
    #[arg(long, conflicts_with = "use_helo")]
    lmtp: bool,

    /// After EHLO, name a client drawn from CIDR per connection with
    /// Postfix's XCLIENT (the server must trust us), then greet again.
    #[allow(clippy::doc_markdown)]
    #[arg(long, value_name = "CIDR")]
    xclient: Option<ipnet::IpNet>,

    /// Lock-step: wait for every reply even when the server offers PIPELINING.
    #[arg(long)]
    no_pipelining: bool,

    /// Send with BDAT (CHUNKING) instead of DATA.
    #[arg(long)]
    bdat: bool,

    /// With --bdat: chunks of this many bytes (default: the whole message
    /// in one chunk).
    #[arg(long, value_name = "BYTES", requires = "bdat", value_parser = clap::value_parser!(u64).range(1..))]
    chunk_size: Option<u64>,

    /// With --bdat and PIPELINING: whole transactions in flight per connection.
    #[arg(short = 'w', long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,

    /// Open loop: messages per second over all connections, on a fixed
    /// schedule; latency is measured from each message's due time.
    #[arg(long, value_name = "N")]
    rate: Option<f64>,

    /// Seconds at the start that are not measured.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    warmup: f64,

    /// Send this message (an .eml file; line ends become CRLF, dots are stuffed).
    #[arg(long, value_name = "FILE")]
    message: Option<PathBuf>,

    /// Sender; {seq} becomes the message's sequence number (clap's help
    /// cannot show the short form: n in braces works too).
    #[arg(long, value_name = "PATTERN", default_value = "smtpload@example.test")]
    from: String,

    /// Recipient; {seq} is the sequence number, {r} the recipient's index.
    #[arg(long, value_name = "PATTERN", default_value = "sink{r}@example.test")]
    to: String,

    /// Name sent with EHLO/HELO.
    #[arg(long, value_name = "NAME", default_value = "smtpload.localhost")]
    helo: String,

    /// Greet with HELO instead of EHLO (no extensions, so no pipelining).
    #[arg(long)]
    use_helo: bool,

    /// Seconds without a reply before a connection counts as timed out.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout: f64,

    /// Stop and exit 1 once more errors than this were counted.
    #[arg(long, value_name = "N")]
    max_errors: Option<u64>,

    /// Write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// At the end, write the run summary (which messages were acknowledged)
    /// to FILE for `smtpsink --run-summary FILE`, so the sink can count
    /// exactly what was lost on the way (atomically: written, then renamed).
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,

    /// Write latency histograms every second to FILE (`HdrHistogram` interval log).
    #[arg(long, value_name = "FILE")]
    hist_log: Option<PathBuf>,

    /// No progress line on stderr.
    #[arg(short = 'q', long)]
    quiet: bool,

    /// Secure each connection with STARTTLS after its first EHLO.
    #[arg(long, conflicts_with = "tls", help_heading = "TLS and AUTH")]
    starttls: bool,

    /// TLS from the first byte (implicit TLS, as on port 465).
    #[arg(long, help_heading = "TLS and AUTH")]
    tls: bool,

    /// With --starttls or --tls: the share of connections that use it
    /// (spread evenly over the connections; the rest stay plaintext).
    #[arg(
        long,
        value_name = "F",
        default_value_t = 1.0,
        help_heading = "TLS and AUTH"
    )]
    tls_fraction: f64,

    /// Accept any server certificate (signatures are still checked).
    #[arg(long, conflicts_with = "ca", help_heading = "TLS and AUTH")]
    insecure: bool,

    /// Trust the CAs in FILE (PEM) for the server's certificate.
    #[arg(long, value_name = "FILE", help_heading = "TLS and AUTH")]
    ca: Option<PathBuf>,

    /// The name to ask for and check (SNI); default: the target's host.
    #[arg(long, value_name = "NAME", help_heading = "TLS and AUTH")]
    tls_name: Option<String>,

    /// Every handshake full: no session resumption.
    #[arg(long, help_heading = "TLS and AUTH")]
    no_resumption: bool,

    /// Log in with AUTH as USER:PASSWORD before the first message.
    #[arg(long, value_name = "USER:PASSWORD", help_heading = "TLS and AUTH")]
    auth: Option<String>,

    /// With --auth: the LOGIN mechanism instead of PLAIN.
    #[arg(long, requires = "auth", help_heading = "TLS and AUTH")]
    auth_login: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One report from several generators' --json reports (the full
    /// report) or --hist-log interval logs (latency per tag).
    Merge {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Write the merged report as JSON to FILE (from JSON reports).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("smtpload: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Each connection is a file descriptor: the soft open-files limit is
/// raised towards the hard one for `connections`, and a run that could not
/// hold them all does not start (its figures would be for fewer).
fn raise_fd_limit(connections: usize, threads: u32) -> Result<(), String> {
    // A replacement opens while the connection it replaces is closing, one
    // at a time; the poller, the logs and stdio need a few more; each
    // further thread, its own poller and replacement.
    let want = u64::try_from(connections).unwrap_or(u64::MAX) + 64 + 2 * u64::from(threads - 1);
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => Err(format!(
            "-c {connections} needs {want} open files; the limit is {got} (ulimit -Hn)"
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "cannot raise the open-files limit for -c {connections}: {e}"
        )),
    }
}

/// `--bind` addresses: of the servers' family, and this host's.
fn check_bind(opts: &Options) -> Result<(), String> {
    for target in &opts.targets {
        let to = match target {
            Target::Tcp(to) => to,
            Target::Unix(_) if !opts.bind.is_empty() => {
                return Err(format!(
                    "--bind: {target} is a UNIX socket, not reached from an IP address"
                ));
            }
            Target::Unix(_) => continue,
        };
        if let Some(ip) = opts.bind.iter().find(|ip| ip.is_ipv4() != to.is_ipv4()) {
            return Err(format!("--bind {ip}: not the address family of {target}"));
        }
    }
    for ip in &opts.bind {
        // An address this host does not have fails every connect; say so
        // now, about --bind, rather than about the server.
        std::net::UdpSocket::bind((*ip, 0))
            .map_err(|e| format!("--bind {ip}: {}", smtpsink::net::plain_error(&e)))?;
    }
    Ok(())
}

/// `--proxy v1|v2`.
fn proxy_version(v: &str) -> Result<proxy::Version, String> {
    match v {
        "v1" | "1" => Ok(proxy::Version::V1),
        "v2" | "2" => Ok(proxy::Version::V2),
        _ => Err(format!("{v}: v1 or v2")),
    }
}

/// The `--source-cidr` network, of the servers' address family.
fn source_net(cli: &Cli, targets: &[Target]) -> Result<ipnet::IpNet, String> {
    let mut tcp = Vec::new();
    for t in targets {
        match t {
            Target::Tcp(a) => tcp.push(*a),
            // A header names an IP destination; a UNIX socket has none.
            Target::Unix(_) => {
                return Err(format!("--proxy: {t} is a UNIX socket, not an IP server"))
            }
        }
    }
    let targets = tcp.as_slice();
    let v4 = targets.first().is_none_or(SocketAddr::is_ipv4);
    if targets.iter().any(|t| t.is_ipv4() != v4) {
        return Err("--proxy: the servers are of two address families; a header names one".into());
    }
    let net = cli.source_cidr.unwrap_or_else(|| {
        let default = if v4 { "192.0.2.0/24" } else { "2001:db8::/32" };
        default.parse().unwrap_or_default()
    });
    match targets.iter().find(|t| t.is_ipv4() != net.addr().is_ipv4()) {
        Some(t) => Err(format!(
            "--source-cidr {net}: not the address family of {t}"
        )),
        None => Ok(net),
    }
}

/// `--per-connection N` or `N-M` (M at least N, N at least 1 in a range).
fn per_connection(v: &str) -> Result<RangeInclusive<u64>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| format!("not a number: {t}"))
    };
    match v.split_once('-') {
        None => num(v).map(|n| n..=n),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a == 0 || b < a {
                return Err(format!("{v}: a range is N-M with 1 <= N <= M"));
            }
            Ok(a..=b)
        }
    }
}

/// `--start-at` seconds since the epoch as a time, at most a day ahead (a
/// time in milliseconds would otherwise wait for millennia, silently).
fn start_time(v: &str) -> Result<std::time::SystemTime, String> {
    let at = v
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .and_then(|d| std::time::UNIX_EPOCH.checked_add(d))
        .ok_or_else(|| format!("{v}: not a time (seconds since 1970, as date +%s prints)"))?;
    let day = Duration::from_secs(86_400);
    if at
        .duration_since(std::time::SystemTime::now())
        .is_ok_and(|ahead| ahead > day)
    {
        return Err(format!(
            "{v}: more than a day ahead (seconds since 1970, not milliseconds)"
        ));
    }
    Ok(at)
}

/// `unix:PATH`, or `HOST:PORT` resolved to its first address.
fn resolve(target: &str) -> Result<Target, String> {
    if let Some(path) = target.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!("bad target '{target}': unix: needs a socket path"));
        }
        return Ok(Target::Unix(path.into()));
    }
    target
        .to_socket_addrs()
        .map_err(|e| format!("bad target '{target}': {e} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| format!("bad target '{target}': no address"))
        .map(Target::Tcp)
}

fn secs(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{what} must be a non-negative number of seconds"))
}

fn credentials(cli: &Cli) -> Result<Option<Credentials>, String> {
    let Some(a) = &cli.auth else {
        return Ok(None);
    };
    let (user, password) = a.split_once(':').ok_or("--auth must be USER:PASSWORD")?;
    Ok(Some(Credentials {
        user: user.into(),
        password: password.into(),
        login: cli.auth_login,
    }))
}

fn tls_options(cli: &Cli) -> Result<Option<TlsOptions>, String> {
    if !(cli.starttls || cli.tls) {
        return Ok(None);
    }
    if !(0.0..=1.0).contains(&cli.tls_fraction) {
        return Err("--tls-fraction must be between 0 and 1".into());
    }
    let trust = match (&cli.ca, cli.insecure) {
        (Some(ca), _) => Trust::Ca(ca),
        (None, true) => Trust::Anyone,
        (None, false) => {
            return Err(
                "with --starttls or --tls, say whom to trust: --ca FILE or --insecure".into(),
            )
        }
    };
    let config = tls::client_config(&trust, !cli.no_resumption)?;
    let host = if let Some(n) = &cli.tls_name {
        n.clone()
    } else {
        let t = cli.targets.first().map_or("", String::as_str);
        if t.starts_with("unix:") {
            return Err(format!("{t}: say which name to ask for with --tls-name"));
        }
        // HOST of HOST:PORT, without the brackets of an IPv6 literal.
        let host = t.rsplit_once(':').map_or(t, |(h, _)| h);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    };
    Ok(Some(TlsOptions {
        config,
        name: tls::server_name(&host)?,
        implicit: cli.tls,
        fraction: cli.tls_fraction,
    }))
}

/// `smtpload merge`: JSON reports into the full report, or interval logs
/// into the latency table; one kind at a time.
fn merge_files(files: &[PathBuf], json: Option<&Path>) -> Result<(), String> {
    let mut reports = Vec::new();
    let mut logs = merge::Logs::default();
    for p in files {
        let cannot = |e: String| format!("cannot read {}: {e}", p.display());
        let data = std::fs::read(p).map_err(|e| cannot(e.to_string()))?;
        if merge::is_json(&data) {
            reports.push(merge::report(&data).map_err(cannot)?);
        } else {
            logs.add(&data).map_err(cannot)?;
        }
        if !reports.is_empty() && logs.files > 0 {
            return Err(cannot(
                "JSON reports and interval logs: merge one kind at a time".into(),
            ));
        }
    }
    if logs.files > 0 {
        if json.is_some() {
            return Err("--json: only from JSON reports (interval logs hold latency only)".into());
        }
        print!("{}", logs.text());
        return Ok(());
    }
    let merged = Results::merge(reports)?;
    print!("{}", merged.text());
    if let Some(path) = json {
        write_json(&merged, path)?;
    }
    Ok(())
}

fn write_json(results: &Results, path: &Path) -> Result<(), String> {
    let text = serde_json::to_string_pretty(&results.json()).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs `threads` independent loops, each with its share of the
/// connections (exactly: the first `c mod threads` take one more), and
/// merges what they measured into one run.
fn run_threads(
    opts: &Options,
    payload: &Payload,
    threads: u32,
    hist_log: Option<&Path>,
) -> Result<Results, String> {
    let log = hist_log
        .map(|p| driver::new_hist_log(p).map_err(|e| format!("cannot write {}: {e}", p.display())))
        .transpose()?
        .map(|l| std::sync::Arc::new(std::sync::Mutex::new(l)));
    let n = threads as usize;
    let errors = std::sync::Arc::default();
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let mut o = opts.clone();
                o.connections = opts.connections / n + usize::from(i < opts.connections % n);
                o.lane = Lane {
                    index: i as u64,
                    count: n as u64,
                    errors: std::sync::Arc::clone(&errors),
                };
                let log = log.clone();
                s.spawn(move || driver::run_lane(&o, payload, log))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a thread panicked".to_string()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let parts = parts
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if n == 1 {
        return parts.into_iter().next().ok_or_else(|| "no results".into());
    }
    let mut merged = Results::merge(parts)?;
    // The run as asked (the lanes' shares of the rate need not add up to
    // it exactly in floating point).
    merged.info = RunInfo {
        message_len: merged.info.message_len,
        ..RunInfo::new(opts)
    };
    Ok(merged)
}

fn run(cli: &Cli) -> Result<ExitCode, String> {
    if let Some(Cmd::Merge { files, json }) = &cli.command {
        merge_files(files, json.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    if cli.threads > cli.connections {
        return Err(format!(
            "--threads {}: more threads than connections (-c {})",
            cli.threads, cli.connections
        ));
    }
    let targets = cli
        .targets
        .iter()
        .map(|t| resolve(t))
        .collect::<Result<Vec<_>, _>>()?;
    let message = match &cli.message {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?),
        None => None,
    };
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        ^ u64::from(std::process::id()).rotate_left(32);
    let payload = Payload::new(&PayloadSpec {
        from: cli.from.clone(),
        to: cli.to.clone(),
        recipients: cli.recipients,
        size: cli.size,
        message,
        chunk: cli
            .chunk_size
            .map_or(0, |c| usize::try_from(c).unwrap_or(usize::MAX)),
        run_id,
    });
    if let Some(r) = cli.rate {
        if !(r > 0.0 && r.is_finite()) {
            return Err("--rate must be a positive number".into());
        }
    }
    let proxy = match cli.proxy {
        Some(v) => Some((v, source_net(cli, &targets)?)),
        None => None,
    };
    let opts = Options {
        targets,
        connections: cli.connections as usize,
        messages: cli.messages,
        duration: cli.duration.map(|d| secs(d, "--duration")).transpose()?,
        per_connection: cli.per_connection.clone(),
        seed: run_id,
        rate: cli.rate,
        warmup: secs(cli.warmup, "--warmup")?,
        timeout: secs(cli.timeout, "--timeout")?,
        max_errors: cli.max_errors,
        client: ClientSettings {
            helo_name: cli.helo.clone(),
            ehlo: !cli.use_helo,
            pipelining: !cli.no_pipelining,
            bdat: cli.bdat,
            window: cli.window as usize,
            auth: credentials(cli)?,
            lmtp: cli.lmtp,
        },
        progress: !cli.quiet,
        tls: tls_options(cli)?,
        start_at: cli.start_at,
        bind: cli.bind.clone(),
        proxy,
        xclient: cli.xclient,
        lane: Lane::default(),
    };
    check_bind(&opts)?;
    if let Some(at) = opts.start_at {
        if let (Ok(ahead), false) = (at.duration_since(std::time::SystemTime::now()), cli.quiet) {
            eprintln!("smtpload: starting in {:.1} s", ahead.as_secs_f64());
        }
    }
    raise_fd_limit(opts.connections, cli.threads)?;
    let results = run_threads(&opts, &payload, cli.threads, cli.hist_log.as_deref())?;
    print!("{}", results.text());
    if let Some(path) = &cli.json {
        write_json(&results, path)?;
    }
    if let Some(path) = &cli.summary {
        // Whole or not at all: the sink may be polling for this file.
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let text = results.summary(run_id).to_json() + "\n";
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let too_many = cli.max_errors.is_some_and(|m| results.error_total() > m);
    if too_many || results.aborted.is_some() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
