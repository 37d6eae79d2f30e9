//! A store, whatever its shape: one server (found directly or through Sentinel) or a Redis
//! Cluster, with its pool of connections.

pub mod cluster;
pub mod sentinel;
pub mod store;
