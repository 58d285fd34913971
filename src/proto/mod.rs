//! The SMTP protocol, sans-IO: bytes in, replies and sink events out.
//!
//! Nothing here touches sockets, files or the clock; every function is
//! deterministic and unit-tested without a network. `line` frames commands,
//! `command` parses them, `address` checks paths, `dot` finds the end of DATA,
//! `reply` holds the reply texts and `server` is the session state machine.

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
pub mod dot;
pub mod line;
pub mod reply;
pub mod server;
