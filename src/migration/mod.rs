//! Copying keys between the stores and comparing them: the backfill, verify, and the reading
//! and writing of keys they share with the re-sync.

pub mod backfill;
pub(crate) mod copy;
pub mod hyperloglog;
pub mod key_state;
pub mod scan_lanes;
pub mod verify;
