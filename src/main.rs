//! The `smtpsink` binary: parse the configuration, bind, run the reactor,
//! print the final statistics. Start-up errors are one line and exit code 1.

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use smtpsink::config::Config;
use smtpsink::reactor::Server;
use smtpsink::sink::{Discard, Sink, Summary, Verify};
use smtpsink::stats::Counters;
use std::process::ExitCode;

fn main() -> ExitCode {
    let config = Config::parse();
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("smtpsink: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> Result<(), String> {
    if config.verify {
        serve(
            config,
            Verify::default(),
            "discarding mail, verifying smtpload headers",
        )
    } else {
        serve(config, Discard::default(), "discarding mail")
    }
}

/// Each connection is a file descriptor: raise the soft limit towards the
/// hard one so `--max-connections` is reachable (the default soft limit is
/// often 1024), and say so when it still is not.
fn raise_fd_limit(config: &Config) {
    let want = u64::from(config.max_connections) + 64;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => eprintln!(
            "smtpsink: warning: the open-files limit is {got}; fewer than --max-connections {} can be served",
            config.max_connections
        ),
        _ => {}
    }
}

fn serve<S: Sink + Summary>(config: &Config, sink: S, what: &str) -> Result<(), String> {
    raise_fd_limit(config);
    let mut server = Server::from_config(config, sink).map_err(|e| e.to_string())?;
    if let Some(every) = config.stats_interval() {
        let mut prev = Counters::default();
        server.on_tick(
            every,
            Box::new(move |stats, elapsed| {
                eprintln!("{}", stats.interval_line(&prev, elapsed, every));
                prev = stats.counters;
            }),
        );
    }
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    eprintln!("smtpsink: listening on {} ({what})", addrs.join(", "));

    // Signals are turned into shutdown requests on a tiny thread, so the
    // reactor only ever sees its own waker.
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let handle = server.shutdown_handle();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            handle.request();
        }
    });

    let report = server
        .run()
        .map_err(|e| format!("event loop failed: {e}"))?;
    print!("{}", report.stats.summary(report.elapsed));
    print!("{}", report.sink.summary());
    Ok(())
}
