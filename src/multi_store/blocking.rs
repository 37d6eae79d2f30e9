//! Keeping the non-default store consistent after a blocking pop. A blocking command runs on
//! the default store only (sent to both it would block on both); when it took something, the
//! same element is removed from the other store, by value rather than by position, so a list
//! that already differs does not lose the wrong element. A blocking XREADGROUP that delivered
//! new entries delivers as many on the other store, so its consumer group advances the same way.

use crate::protocol::command::Command;
use crate::protocol::reply::Reply;

/// The commands that replay on the non-default store what a blocking command did on the
/// default one, or nothing when it timed out or changed nothing (XREAD only reads).
pub fn mirror(cmd: &Command, reply: &Reply) -> Vec<Command> {
    if matches!(reply, Reply::Nil) {
        return Vec::new();
    }
    let name = cmd.name();
    match (name.as_str(), reply) {
        ("blpop", Reply::Array(kv)) => lrem_popped(kv, "1"),
        ("brpop", Reply::Array(kv)) => lrem_popped(kv, "-1"),
        ("bzpopmin" | "bzpopmax", Reply::Array(kms)) => match (kms.first(), kms.get(1)) {
            (Some(key), Some(member)) => bytes_of([key, member])
                .map(|[k, m]| vec![Command::from_args([&b"zrem"[..], k, m])])
                .unwrap_or_default(),
            _ => Vec::new(),
        },
        ("brpoplpush", element) => moved(cmd, element, b"RIGHT", b"LEFT"),
        ("blmove", element) => match (cmd.arg(3), cmd.arg(4)) {
            (Some(from), Some(to)) => moved(cmd, element, from, to),
            _ => Vec::new(),
        },
        ("blmpop", Reply::Array(popped)) => {
            // BLMPOP timeout numkeys key… LEFT|RIGHT [COUNT n]: the direction follows the keys
            // (a key may well be named "left").
            let direction = std::str::from_utf8(cmd.arg(2).unwrap_or_default())
                .ok()
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|numkeys| cmd.arg(3 + numkeys));
            let from_left = direction.is_some_and(|d| d.eq_ignore_ascii_case(b"left"));
            multi_popped(popped, |key, item| {
                let count: &[u8] = if from_left { b"1" } else { b"-1" };
                Some(Command::from_args([&b"lrem"[..], key, count, bytes(item)?]))
            })
        }
        ("xreadgroup", Reply::Array(streams)) => delivered_again(cmd, streams),
        ("bzmpop", Reply::Array(popped)) => multi_popped(popped, |key, item| match item {
            Reply::Array(pair) => Some(Command::from_args([
                &b"zrem"[..],
                key,
                bytes(pair.first()?)?,
            ])),
            _ => None,
        }),
        _ => Vec::new(),
    }
}

/// XREADGROUP GROUP g c [COUNT n] [BLOCK ms] [NOACK] STREAMS k… id…: for each stream read with
/// `>` that delivered entries, the same group and consumer read as many without blocking on the
/// other store. Entries given again there by ID (a consumer re-reading its pending ones)
/// change nothing and are not replayed.
fn delivered_again(cmd: &Command, streams: &[Reply]) -> Vec<Command> {
    let args: Vec<&[u8]> = cmd.args().collect();
    let (Some(group), Some(consumer)) = (args.get(2), args.get(3)) else {
        return Vec::new();
    };
    let Some(at) = args.iter().position(|a| a.eq_ignore_ascii_case(b"streams")) else {
        return Vec::new();
    };
    let noack = args[..at].iter().any(|a| a.eq_ignore_ascii_case(b"noack"));
    let named = &args[at + 1..];
    let (keys, ids) = named.split_at(named.len() / 2);
    streams
        .iter()
        .filter_map(|stream| {
            let Reply::Array(parts) = stream else {
                return None;
            };
            let (Some(key), Some(Reply::Array(entries))) =
                (parts.first().and_then(bytes), parts.get(1))
            else {
                return None;
            };
            let read_new = keys.iter().zip(ids).any(|(k, id)| *k == key && *id == b">");
            if !read_new || entries.is_empty() {
                return None;
            }
            let count = entries.len().to_string();
            let mut again = Command::from_args([&b"xreadgroup"[..], b"GROUP", group, consumer]);
            again.push(b"COUNT");
            again.push(count.as_bytes());
            if noack {
                again.push(b"NOACK");
            }
            for arg in [&b"STREAMS"[..], key, b">"] {
                again.push(arg);
            }
            Some(again)
        })
        .collect()
}

fn lrem_popped(key_and_value: &[Reply], count: &str) -> Vec<Command> {
    match (
        key_and_value.first().and_then(bytes),
        key_and_value.get(1).and_then(bytes),
    ) {
        (Some(key), Some(value)) => vec![Command::from_args([
            &b"lrem"[..],
            key,
            count.as_bytes(),
            value,
        ])],
        _ => Vec::new(),
    }
}

/// BLMOVE/BRPOPLPUSH: remove the element from the source's end it was taken from, push it on
/// the destination's end it went to.
fn moved(cmd: &Command, element: &Reply, from: &[u8], to: &[u8]) -> Vec<Command> {
    let (Some(source), Some(destination), Some(value)) = (cmd.arg(1), cmd.arg(2), bytes(element))
    else {
        return Vec::new();
    };
    let count: &[u8] = if from.eq_ignore_ascii_case(b"left") {
        b"1"
    } else {
        b"-1"
    };
    let push: &[u8] = if to.eq_ignore_ascii_case(b"left") {
        b"lpush"
    } else {
        b"rpush"
    };
    vec![
        Command::from_args([&b"lrem"[..], source, count, value]),
        Command::from_args([push, destination, value]),
    ]
}

/// BLMPOP/BZMPOP reply `[key, [items…]]`.
fn multi_popped(popped: &[Reply], each: impl Fn(&[u8], &Reply) -> Option<Command>) -> Vec<Command> {
    let (Some(key), Some(Reply::Array(items))) = (popped.first().and_then(bytes), popped.get(1))
    else {
        return Vec::new();
    };
    items.iter().filter_map(|item| each(key, item)).collect()
}

fn bytes(value: &Reply) -> Option<&[u8]> {
    match value {
        Reply::Bulk(b) | Reply::Status(b) => Some(b),
        _ => None,
    }
}

fn bytes_of<const N: usize>(values: [&Reply; N]) -> Option<[&[u8]; N]> {
    let mut out = [&b""[..]; N];
    for (slot, value) in out.iter_mut().zip(values) {
        *slot = bytes(value)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    #[test]
    fn a_pop_is_mirrored_by_value_and_a_timeout_by_nothing() {
        let blpop = Command::from_args(["BLPOP", "jobs", "0"]);
        assert!(mirror(&blpop, &Reply::Nil).is_empty());
        let mirrored = mirror(&blpop, &Reply::Array(vec![bulk("jobs"), bulk("job-1")]));
        assert_eq!(
            mirrored,
            vec![Command::from_args(["lrem", "jobs", "1", "job-1"])]
        );
    }

    #[test]
    fn a_move_removes_from_the_source_and_pushes_on_the_destination() {
        let blmove = Command::from_args(["blmove", "src", "dst", "RIGHT", "LEFT", "1"]);
        assert_eq!(
            mirror(&blmove, &bulk("x")),
            vec![
                Command::from_args(["lrem", "src", "-1", "x"]),
                Command::from_args(["lpush", "dst", "x"])
            ]
        );
    }

    #[test]
    fn a_group_read_delivers_as_many_new_entries_on_the_other_store() {
        let cmd = Command::from_args([
            "XREADGROUP",
            "GROUP",
            "g",
            "c1",
            "BLOCK",
            "0",
            "NOACK",
            "STREAMS",
            "a",
            "b",
            "c",
            ">",
            "0",
            ">",
        ]);
        let entry =
            |id: &str| Reply::Array(vec![bulk(id), Reply::Array(vec![bulk("f"), bulk("v")])]);
        let reply = Reply::Array(vec![
            Reply::Array(vec![
                bulk("a"),
                Reply::Array(vec![entry("1-0"), entry("2-0")]),
            ]),
            // Read by ID: the consumer's own pending entries, nothing changes.
            Reply::Array(vec![bulk("b"), Reply::Array(vec![entry("1-0")])]),
            Reply::Array(vec![bulk("c"), Reply::Array(vec![])]),
        ]);
        assert_eq!(
            mirror(&cmd, &reply),
            vec![Command::from_args([
                "xreadgroup",
                "GROUP",
                "g",
                "c1",
                "COUNT",
                "2",
                "NOACK",
                "STREAMS",
                "a",
                ">"
            ])]
        );
    }

    #[test]
    fn a_multi_pop_takes_its_direction_from_after_the_keys() {
        let popped = Reply::Array(vec![bulk("left"), Reply::Array(vec![bulk("x")])]);
        let right = Command::from_args(["blmpop", "0", "2", "left", "other", "RIGHT"]);
        assert_eq!(
            mirror(&right, &popped),
            vec![Command::from_args(["lrem", "left", "-1", "x"])]
        );
        let left = Command::from_args(["BLMPOP", "0", "1", "right", "LEFT", "COUNT", "1"]);
        let popped = Reply::Array(vec![bulk("right"), Reply::Array(vec![bulk("x")])]);
        assert_eq!(
            mirror(&left, &popped),
            vec![Command::from_args(["lrem", "right", "1", "x"])]
        );
    }

    #[test]
    fn sorted_set_pops_remove_the_member() {
        let cmd = Command::from_args(["bzpopmin", "z", "0"]);
        let reply = Reply::Array(vec![bulk("z"), bulk("a"), bulk("1")]);
        assert_eq!(
            mirror(&cmd, &reply),
            vec![Command::from_args(["zrem", "z", "a"])]
        );
    }
}
