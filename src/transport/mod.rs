//! One connection to one server: how to reach it (`config`), sockets and TLS, waiting with
//! timeouts and cancellation, and the requests whose outcome a timeout left in doubt.

pub mod borrowed;
pub mod cancel;
pub mod config;
pub mod connection;
pub mod in_doubt;
pub mod poll;
pub mod spin_wait;
pub mod tls;
