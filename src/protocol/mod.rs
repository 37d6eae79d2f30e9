//! What Redis speaks: commands and replies as bytes, the command table, key namespaces and
//! glob patterns. No I/O.

pub mod call;
pub mod command;
pub mod command_table;
pub mod glob;
pub mod namespace;
pub mod reply;
