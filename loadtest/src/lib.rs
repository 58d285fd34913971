//! smtpload: the SMTP load generator bundled with smtpsink.
//!
//! A single-threaded mio reactor ([`driver`]) drives one sans-IO
//! `ClientSession` (from the smtpsink library, shared with the server's
//! reply and dot-stuffing code) per connection. Messages are prepared
//! before the run ([`payload`]); latencies go into HDR histograms and come
//! out as a report, JSON or an `HdrHistogram` interval log ([`report`]),
//! with the run summary of acknowledged messages for `smtpsink
//! --run-summary`; [`merge`] combines such logs from several generator
//! hosts.

pub mod driver;
pub mod merge;
pub mod payload;
pub mod report;
