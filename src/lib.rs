//! smtpsink: an SMTP sink server built for raw throughput.
//!
//! Architecture, outermost first; every arrow points down, so the protocol
//! depends on nothing above it:
//! - [`reactor`] owns the sockets: one mio `Poll`, a slab of connections
//!   (token = key), accept with back-pressure, a read budget and a
//!   still-ready queue for fairness. `Server::run` is the whole loop: poll,
//!   file events, still-ready, completions, timers, tick hook, shutdown.
//!   `reactor::conn` turns readiness into the session's events and acts on
//!   its requests; `reactor::timer` keeps deadlines and reads the clock.
//! - [`completion`] brings deferred sink verdicts back to the loop from any
//!   thread (a queue and the loop's waker); the same queue carries
//!   requests to each loop of a [`group`] (`--threads N`: independent loops
//!   on `SO_REUSEPORT` sockets, figures merged on the reporting side).
//! - [`sink`] is where message data goes (discard, verify, maildir: storage
//!   threads, group commit, back-pressure through `Sink::pressure`);
//!   [`stats`] counts and keeps latency histograms (mergeable across loops);
//!   [`histlog`] writes them as `HdrHistogram` interval logs; [`run_summary`]
//!   is what smtpload acknowledged, read by the verify sink; [`config`] is
//!   the CLI.
//! - [`proto`] is the protocol, sans-IO: [`proto::server::Session`] takes
//!   bytes and events and gives replies, sink calls and one typed
//!   [`proto::server::Request`] per event (close, await a verdict, hold a
//!   reply); commands run through a verb table; reply texts live in the
//!   settings. [`proto::client::ClientSession`] is its mirror, used by the
//!   bundled load generator `smtpload` (the `loadtest/` crate).
//! - [`net`] is the I/O layer both binaries share: the transport seam
//!   (plain TCP; TLS to come) and per-connection buffers and loops.
//!
//! Command lines and body runs are borrowed slices of one read buffer per
//! loop, replies go out of one output buffer per loop: the steady state
//! allocates nothing per command or per message.

#![forbid(unsafe_code)]

pub mod completion;
pub mod config;
pub mod control;
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
pub mod histlog;
pub mod metrics;
pub mod net;
pub mod proto;
pub mod reactor;
pub mod rules;
pub mod run_summary;
pub mod sink;
pub mod stats;
