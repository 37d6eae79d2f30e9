//! A store, whatever its shape: one server (`node`, found directly or through `sentinel`) or a
//! Redis `cluster` of nodes, behind the one `Store` the layers above talk to.

pub mod cluster;
pub mod node;
pub mod sentinel;
pub mod store;
