//! What keeps the stores together when one fails: circuit breakers, the journal of keys a
//! store missed and the re-sync that copies them again, scripts a store lacks, and the state
//! all MultiStores of one partition share (`migration_state`).

pub mod breaker;
pub mod journal;
pub mod migration_state;
pub mod resync;
pub mod scripts;
pub mod write_epochs;
