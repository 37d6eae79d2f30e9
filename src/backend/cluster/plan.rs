//! How a command runs on a cluster: on its slot's master, split by slot, or spread over the
//! masters, and how the replies are combined.

use super::slot::key_slot;
use crate::protocol::command::Command;
use crate::protocol::command_table;
use crate::transport::connection::Reply;

/// How a command is run on a cluster.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// On the master of this slot; `None` (no key) on any master.
    Slot(Option<u16>),
    /// Split by slot and the replies combined.
    Split(Split),
    /// On every master, the replies combined.
    AllMasters(Combine),
    /// SCAN, one master after the other.
    Scan,
    /// RANDOMKEY: a master taken in turn, so samples cover the whole keyspace over time.
    AnyMaster,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Split {
    /// MGET: one array, in the caller's key order.
    Values,
    /// MSET: key-value pairs; OK once every part said OK.
    Pairs,
    /// DEL, UNLINK, EXISTS, TOUCH: the counts added up.
    Count,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Combine {
    /// The first master's reply (writes that every master must receive).
    First,
    Sum,
    /// KEYS: the arrays joined and sorted, as redis-rb's cluster client returns them.
    ConcatSorted,
}

pub(super) fn plan(cmd: &Command) -> Plan {
    let Some(spec) = command_table::lookup(cmd) else {
        return Plan::Slot(None);
    };
    match spec.name {
        "scan" => return Plan::Scan,
        "dbsize" => return Plan::AllMasters(Combine::Sum),
        "keys" => return Plan::AllMasters(Combine::ConcatSorted),
        "randomkey" => return Plan::AnyMaster,
        "flushdb" | "flushall" | "script|load" | "script|flush" | "function|load"
        | "function|delete" | "function|flush" | "function|restore" | "config|set"
        | "config|resetstat" | "config|rewrite" => return Plan::AllMasters(Combine::First),
        _ => {}
    }
    let keys = command_table::keys(cmd, spec).unwrap_or_default();
    let Some(first) = keys.first() else {
        return Plan::Slot(None);
    };
    let slot = key_slot(first);
    if keys.iter().all(|k| key_slot(k) == slot) {
        return Plan::Slot(Some(slot));
    }
    match spec.name {
        "mget" => Plan::Split(Split::Values),
        "mset" => Plan::Split(Split::Pairs),
        "del" | "unlink" | "exists" | "touch" => Plan::Split(Split::Count),
        // The server answers CROSSSLOT, which is what the caller should see.
        _ => Plan::Slot(Some(slot)),
    }
}

/// The integer replies of several nodes added up (DBSIZE, DEL over slots).
pub(super) fn sum_of(replies: &[Reply]) -> Reply {
    Reply::Integer(
        replies
            .iter()
            .map(|r| if let Reply::Integer(n) = r { *n } else { 0 })
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_spread_split_and_single_slot_commands() {
        let plan_of = |args: &[&str]| plan(&Command::from_args(args));
        assert_eq!(plan_of(&["get", "foo"]), Plan::Slot(Some(12182)));
        assert_eq!(plan_of(&["ping"]), Plan::Slot(None));
        assert_eq!(
            plan_of(&["mget", "{a}1", "{a}2"]),
            Plan::Slot(Some(key_slot(b"a")))
        );
        assert_eq!(plan_of(&["mget", "foo", "bar"]), Plan::Split(Split::Values));
        assert_eq!(
            plan_of(&["mset", "foo", "1", "bar", "2"]),
            Plan::Split(Split::Pairs)
        );
        assert_eq!(plan_of(&["DEL", "foo", "bar"]), Plan::Split(Split::Count));
        assert_eq!(
            plan_of(&["sunionstore", "foo", "bar"]),
            Plan::Slot(Some(12182))
        );
        assert_eq!(plan_of(&["scan", "0"]), Plan::Scan);
        assert_eq!(plan_of(&["dbsize"]), Plan::AllMasters(Combine::Sum));
        assert_eq!(
            plan_of(&["script", "load", "return 1"]),
            Plan::AllMasters(Combine::First)
        );
        assert_eq!(
            plan_of(&["eval", "return 1", "1", "foo"]),
            Plan::Slot(Some(12182))
        );
    }
}
