//! Core of gitlab_multistore: Redis connections and the routing of commands between the two
//! stores of a partition being migrated. Pure Rust, no Ruby: the binding in
//! `ext/gitlab_multistore` converts values and maps errors, nothing else.
//!
//! The layers, each a folder, each using only those listed before it (and the files at the
//! root: `error`, `fork`, `seconds`, `metrics`):
//! - `protocol`: what Redis speaks -- commands, replies, the command table (which arguments
//!   are keys, whether a command reads or writes), key namespaces, glob patterns.
//! - `transport`: one connection to one server -- sockets, TLS, timeouts, cancellation,
//!   requests whose outcome is in doubt, connections borrowed for a block.
//! - `backend`: a store, whatever its shape -- one server, one found through Sentinel, or a
//!   Cluster -- with its pool of connections.
//! - `routing`: which store a command goes to under the migration flags.
//! - `migration`: copying and comparing keys between stores -- backfill, verify.
//! - `healing`: what keeps the stores together when one fails -- breakers, the journal of keys
//!   a store missed and the re-sync that copies them, the state a partition shares.
//! - `multi_store`: the entry point a client calls, built on all of the above.

pub mod backend;
pub mod error;
pub mod fork;
pub mod healing;
pub mod metrics;
pub mod migration;
pub mod multi_store;
pub mod protocol;
pub mod routing;
pub mod seconds;
pub mod transport;

pub use backend::store::{ReadTimeout, Store};
pub use error::{Error, Result, ServerErrorReply};
pub use multi_store::session::Session;
pub use multi_store::{Event, MultiStore, Outcome};
pub use protocol::command::Command;
pub use protocol::reply::Reply;
pub use routing::{Flags, ReadStrategy, Role};
pub use transport::cancel::CancelToken;
pub use transport::config::{Address, StoreConfig};
