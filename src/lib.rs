//! Core of gitlab_multistore: Redis connections and the routing of commands between the two
//! stores of a partition being migrated. Pure Rust, no Ruby: the binding in
//! `ext/gitlab_multistore` converts values and maps errors, nothing else.

pub mod backfill;
pub mod blocking;
pub mod borrowed;
pub mod breaker;
pub mod cancel;
pub mod cluster;
pub mod command;
pub mod command_table;
pub mod config;
pub mod connection;
mod copy;
pub mod error;
pub mod fork;
pub mod glob;
pub mod hyperloglog;
pub mod in_doubt;
pub mod journal;
pub mod key_state;
pub mod metrics;
pub mod migration_state;
pub mod multi_store;
pub mod namespace;
pub mod poll;
pub mod reply;
pub mod resync;
pub mod routing;
pub mod scan_lanes;
pub mod scripts;
pub mod seconds;
pub mod sentinel;
pub mod session;
pub mod spin_wait;
pub mod store;
pub mod stream_ids;
pub mod subscription;
pub mod tls;
pub mod verify;
pub mod write_epochs;

pub use cancel::CancelToken;
pub use command::Command;
pub use config::{Address, StoreConfig};
pub use error::{Error, Result, ServerErrorReply};
pub use multi_store::{Event, MultiStore, Outcome};
pub use reply::Reply;
pub use routing::{Flags, ReadStrategy, Role};
pub use session::Session;
pub use store::{ReadTimeout, Store};
