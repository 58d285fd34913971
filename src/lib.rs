//! smtpsink: an SMTP sink server built for raw throughput.
//!
//! Architecture, outermost first:
//! - [`reactor`] owns the sockets: one mio `Poll`, a slab of connections
//!   (token = slab key), accept with back-pressure, a read budget and a
//!   still-ready queue for fairness, replies flushed when input runs dry.
//! - [`proto`] is the protocol, sans-IO: [`proto::server::Session`] takes bytes
//!   and produces replies and sink events; it never sees a socket or a clock.
//!   [`proto::client::ClientSession`] is its mirror, used by the bundled load
//!   generator `smtpload` (the `loadtest/` crate).
//! - [`sink`] is where message data goes, behind the small [`sink::Sink`]
//!   trait: discard, or verify (smtpload's integrity headers); storing sinks
//!   can defer the final reply.
//! - [`stats`] counts and keeps latency histograms; [`config`] is the CLI.
//!
//! Command lines and body runs are borrowed slices of the connection's read
//! buffer: the steady state allocates nothing per command or per message.

#![forbid(unsafe_code)]

pub mod completion;
pub mod config;
pub mod net;
pub mod proto;
pub mod reactor;
pub mod sink;
pub mod stats;
