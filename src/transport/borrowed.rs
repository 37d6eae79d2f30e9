//! Connections a thread has borrowed (GitLab's `with_borrowed_connection`): while a borrow is
//! open, every round trip the thread makes to a store uses one connection of that store, kept
//! for the thread between calls instead of going back to the pool -- as a redis-rb client the
//! thread had to itself would. Connection-scoped state (CLIENT SETNAME, CLIENT TRACKING, a
//! WATCH) then stays with the thread's calls.
//!
//! Per OS thread: a Ruby thread runs its native calls on its own OS thread (GVL released or
//! not), so a thread-local slot is that Ruby thread's, and needs no lock. Borrows nest; the
//! connection goes back to the pool when the outermost one ends. But Ruby reuses the OS thread
//! of a thread that ended for a later one, and a borrow whose end never ran (opened in a fiber
//! never resumed) would pass to it: so the slots also name their owner (`claim`), and a call
//! from another owner closes them first.

use crate::fork;
use crate::transport::connection::Connection;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};

/// Identifies a `Store` for the slots (an address could be reused by a later store).
pub fn next_store_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

struct Slot {
    store: u64,
    depth: usize,
    conn: Option<Connection>,
}

thread_local! {
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
    /// Whose calls this OS thread runs now (the binding's Ruby thread), as last claimed.
    static OWNER: Cell<u64> = const { Cell::new(0) };
}

/// Says that this OS thread's calls are now `owner`'s (a Ruby thread): borrows left by another
/// owner are closed, their connections with them (never given to the pool: they may hold that
/// owner's WATCH or CLIENT SETNAME). Cheap when nothing is borrowed.
pub fn claim(owner: u64) {
    if OWNER.with(Cell::get) == owner {
        return;
    }
    OWNER.with(|current| current.set(owner));
    let left: Vec<Slot> = with_slots(std::mem::take);
    for slot in left {
        if let Some(conn) = slot.conn.and_then(of_this_process) {
            drop(conn);
        }
    }
}

/// Opens (or nests) a borrow of `store`'s connection on this thread.
pub fn begin(store: u64) {
    with_slots(
        |slots| match slots.iter_mut().find(|slot| slot.store == store) {
            Some(slot) => slot.depth += 1,
            None => slots.push(Slot {
                store,
                depth: 1,
                conn: None,
            }),
        },
    );
}

/// Ends one borrow of `store`; the outermost one hands back the connection it kept, for the
/// pool.
pub fn end(store: u64) -> Option<Connection> {
    with_slots(|slots| {
        let index = slots.iter().position(|slot| slot.store == store)?;
        let slot = &mut slots[index];
        slot.depth = slot.depth.saturating_sub(1);
        if slot.depth > 0 {
            return None;
        }
        slots.swap_remove(index).conn.and_then(of_this_process)
    })
}

/// Whether this thread borrows `store`'s connection.
pub fn is_borrowed(store: u64) -> bool {
    with_slots(|slots| slots.iter().any(|slot| slot.store == store))
}

/// The connection this thread keeps for `store`, taken out for one round trip; `None` when the
/// thread does not borrow it or has no connection yet (the caller opens one, and `keep` holds
/// it afterwards).
pub fn take(store: u64) -> Option<Connection> {
    with_slots(|slots| {
        slots
            .iter_mut()
            .find(|slot| slot.store == store)
            .and_then(|slot| slot.conn.take())
            .and_then(of_this_process)
    })
}

/// Keeps `conn` for this thread if it borrows `store` and holds no other connection of it;
/// otherwise hands it back (for the pool).
pub fn keep(store: u64, conn: Connection) -> Option<Connection> {
    with_slots(
        |slots| match slots.iter_mut().find(|slot| slot.store == store) {
            Some(slot) if slot.conn.is_none() => {
                slot.conn = Some(conn);
                None
            }
            _ => Some(conn),
        },
    )
}

/// A connection kept across a fork belongs to the parent: closing it here could end the
/// parent's TLS session, so it is left alone.
fn of_this_process(conn: Connection) -> Option<Connection> {
    if conn.fork_generation() == fork::generation() {
        Some(conn)
    } else {
        std::mem::forget(conn);
        None
    }
}

fn with_slots<T>(f: impl FnOnce(&mut Vec<Slot>) -> T) -> T {
    SLOTS.with(|slots| f(&mut slots.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_nest_and_only_the_outermost_end_closes_the_slot() {
        let store = next_store_id();
        assert!(!is_borrowed(store));
        begin(store);
        begin(store);
        assert!(end(store).is_none());
        assert!(is_borrowed(store));
        assert!(end(store).is_none());
        assert!(!is_borrowed(store));
    }

    #[test]
    fn each_thread_has_its_own_borrows() {
        let store = next_store_id();
        begin(store);
        let elsewhere = std::thread::spawn(move || is_borrowed(store)).join();
        assert!(matches!(elsewhere, Ok(false)));
        assert!(is_borrowed(store));
        end(store);
    }

    #[test]
    fn another_owner_on_the_same_thread_does_not_inherit_a_borrow_left_open() {
        let store = next_store_id();
        claim(1);
        begin(store);
        claim(1);
        assert!(is_borrowed(store));
        claim(2); // a later Ruby thread on the reused OS thread
        assert!(!is_borrowed(store));
        assert!(end(store).is_none());
    }

    #[test]
    fn ending_a_borrow_that_was_never_begun_changes_nothing() {
        let store = next_store_id();
        assert!(end(store).is_none());
        assert!(!is_borrowed(store));
    }
}
