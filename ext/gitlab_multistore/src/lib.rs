//! Ruby binding of the gitlab_multistore core. Thin on purpose: it converts Ruby values to
//! commands and replies back, maps errors to redis-rb's classes, and releases the GVL around
//! every round trip. Routing and connections live in the core crate.

mod convert;
mod error;
mod events;
mod logging;
mod native_migration;
mod native_session;
mod native_store;
mod nogvl;
mod store_config;

/// Every reply allocates a buffer per bulk string and per array; glibc's malloc spent ~14 % of
/// an HGETALL of 1,000 fields in allocating and consolidating them. mimalloc's thread-local
/// heaps take HGETALL from 1.10x to 1.25-1.31x of redis-rb (rake bench). Only Rust's own
/// allocations use it: every byte handed to Ruby is copied into memory Ruby allocates.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use magnus::{Error, Ruby};

#[magnus::init(name = "gitlab_multistore")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    logging::init();
    let module = ruby.define_module("GitlabMultistore")?;
    native_store::init(ruby, module)?;
    native_session::init(ruby, module)?;
    native_migration::init(ruby, module)?;
    Ok(())
}
