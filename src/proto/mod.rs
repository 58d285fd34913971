//! The SMTP protocol, sans-IO: bytes in, replies and sink events out.
//!
//! Nothing here touches sockets, files or the clock; every function is
//! deterministic and unit-tested without a network. `line` frames commands,
//! `command` parses them, `address` checks paths, `dot` finds the end of DATA,
//! `reply` holds the reply texts and `server` is the session state machine.

pub mod address;
pub mod command;
pub mod dot;
pub mod line;
pub mod reply;
pub mod server;
