//! The SMTP protocol, sans-IO: bytes in, replies and sink events out.
//!
//! Nothing here touches sockets, files or the clock, and nothing here
//! imports the rest of the crate: the session talks to sinks and statistics
//! through small traits it owns (`server::Sink`, `server::Observer`). Every
//! function is deterministic and unit-tested without a network. `line`
//! frames commands, `command` parses them, `address` checks paths, `dot`
//! finds the end of DATA, `reply` names the replies and holds their texts,
//! `decimal` writes numbers, `proxy` writes `HAProxy`'s PROXY headers, `forward` reads
//! XCLIENT/XFORWARD attributes,
//! `server` is the session state machine with its verb table, and `client`
//! is its mirror for the load generator.

// "Network input never panics the server", made mechanical: no unwrap,
// expect, panic or unchecked indexing in protocol code outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable
    )
)]

pub mod address;
pub mod client;
pub mod command;
pub mod decimal;
pub mod dot;
pub mod forward;
pub mod line;
pub mod proxy;
pub mod reply;
pub mod server;
