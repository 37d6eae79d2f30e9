//! What a key is, for telling whether two stores hold the same: its type, a digest of its value
//! in a canonical form, and its TTL. Canonical, because two servers holding the same data may
//! store it differently: sets and hashes come back in each server's own order (sorted here),
//! a HyperLogLog's bytes change when PFCOUNT caches its count (its registers are compared), and
//! a stream is more than its entries (its consumer groups — pending count, last delivered ID —
//! are part of it). An error reply (ACL, a module type the server refuses to read) makes the key
//! unreadable, which is never "the same": two refusals would otherwise hash alike.
//! Shared by verify, backfill's second look and re-sync.

use crate::backend::store::Store;
use crate::error::{Error, Result, ServerErrorReply};
use crate::protocol::command::Command;
use crate::protocol::reply::Reply;
use crate::transport::cancel::CancelToken;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    Absent,
    Present {
        kind: Vec<u8>,
        digest: [u8; 20],
        /// Milliseconds to live; -1 without expiry.
        pttl: i64,
    },
    /// A read of it was answered with an error.
    Unreadable(ServerErrorReply),
}

impl KeyState {
    pub fn is_absent(&self) -> bool {
        matches!(self, KeyState::Absent)
    }

    /// Whether two stores hold the same key: same type and value, TTLs within `ttl_tolerance_ms`
    /// (they tick down between the two reads), or absent from both.
    pub fn same_as(&self, other: &KeyState, ttl_tolerance_ms: i64) -> bool {
        match (self, other) {
            (KeyState::Absent, KeyState::Absent) => true,
            (
                KeyState::Present {
                    kind: a_kind,
                    digest: a_digest,
                    pttl: a_ttl,
                },
                KeyState::Present {
                    kind: b_kind,
                    digest: b_digest,
                    pttl: b_ttl,
                },
            ) => {
                let ttl_agrees = if *a_ttl < 0 || *b_ttl < 0 {
                    a_ttl == b_ttl
                } else {
                    (a_ttl - b_ttl).abs() <= ttl_tolerance_ms
                };
                a_kind == b_kind && a_digest == b_digest && ttl_agrees
            }
            _ => false,
        }
    }
}

/// The state of each key on `store`, in two pipelined round trips.
pub fn read(store: &Store, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<Vec<KeyState>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut meta = Vec::with_capacity(keys.len() * 2);
    for key in keys {
        meta.push(Command::from_args([&b"TYPE"[..], key]));
        meta.push(Command::from_args([&b"PTTL"[..], key]));
    }
    let meta = store.pipeline(&meta, cancel)?;
    let mut reads = Vec::with_capacity(keys.len());
    // Where each key's value replies are in `reads`.
    let mut spans = Vec::with_capacity(keys.len());
    for (key, pair) in keys.iter().zip(meta.chunks(2)) {
        let start = reads.len();
        if let Reply::Status(kind) | Reply::Bulk(kind) = &pair[0] {
            reads.extend(value_reads(kind, key));
        }
        spans.push(start..reads.len());
    }
    let values = if reads.is_empty() {
        Vec::new()
    } else {
        store.pipeline(&reads, cancel)?
    };
    if values.len() != reads.len() {
        return Err(Error::Protocol("fewer replies than commands".into()));
    }
    Ok(meta
        .chunks(2)
        .zip(spans)
        .map(|(pair, span)| state(&pair[0], &pair[1], &values[span]))
        .collect())
}

fn state(kind: &Reply, pttl: &Reply, values: &[Reply]) -> KeyState {
    let refused = [kind, pttl]
        .into_iter()
        .chain(values)
        .find_map(|r| match r {
            Reply::Error(line) => Some(ServerErrorReply::from_line(line)),
            _ => None,
        });
    if let Some(error) = refused {
        return KeyState::Unreadable(error);
    }
    let kind = match kind {
        Reply::Status(kind) | Reply::Bulk(kind) => kind,
        _ => {
            return KeyState::Unreadable(ServerErrorReply::from_line(b"ERR unexpected TYPE reply"))
        }
    };
    if kind.as_slice() == b"none" {
        return KeyState::Absent;
    }
    let Reply::Integer(pttl) = *pttl else {
        return KeyState::Unreadable(ServerErrorReply::from_line(b"ERR unexpected PTTL reply"));
    };
    KeyState::Present {
        kind: kind.clone(),
        digest: digest(kind, values),
        pttl,
    }
}

/// The reads that return a key's whole value in an order that does not depend on the server.
fn value_reads(kind: &[u8], key: &[u8]) -> Vec<Command> {
    let one = |args: &[&[u8]]| vec![Command::from_args(args)];
    match kind {
        b"none" => Vec::new(),
        b"string" => one(&[b"GET", key]),
        b"list" => one(&[b"LRANGE", key, b"0", b"-1"]),
        b"set" => one(&[b"SMEMBERS", key]),
        b"zset" => one(&[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"]),
        b"hash" => one(&[b"HGETALL", key]),
        // Its entries and everything its consumer groups hold, in one reply.
        b"stream" => one(&[b"XINFO", b"STREAM", key, b"FULL", b"COUNT", b"0"]),
        // Unknown (module) types: their DUMP, the best available.
        _ => one(&[b"DUMP", key]),
    }
}

fn digest(kind: &[u8], values: &[Reply]) -> [u8; 20] {
    let mut items: Vec<Vec<u8>> = Vec::new();
    match (kind, values) {
        (b"string", [Reply::Bulk(value)]) => {
            match crate::migration::hyperloglog::registers(value) {
                Some(registers) => {
                    items.push(b"hyperloglog registers".to_vec());
                    items.push(registers);
                }
                None => items.push(value.clone()),
            }
        }
        (b"set", [members]) => {
            flatten(members, &mut items);
            items.sort();
        }
        (b"hash", [fields]) => {
            flatten(fields, &mut items);
            items = sorted_pairs(&items);
        }
        (b"stream", [full]) => items = stream_state(full),
        _ => values.iter().for_each(|value| flatten(value, &mut items)),
    }
    let mut sha = sha1_smol::Sha1::new();
    sha.update(kind);
    for item in &items {
        sha.update(&(item.len() as u64).to_le_bytes());
        sha.update(item);
    }
    sha.digest().bytes()
}

/// Field/value pairs, each length-prefixed (so field "f1" value "v1" cannot collide with "f1v"
/// / "1"), sorted.
fn sorted_pairs(items: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut pairs: Vec<Vec<u8>> = items
        .chunks(2)
        .map(|pair| {
            let mut joined = (pair[0].len() as u64).to_le_bytes().to_vec();
            pair.iter().for_each(|part| joined.extend_from_slice(part));
            joined
        })
        .collect();
    pairs.sort();
    pairs
}

/// The parts of XINFO STREAM … FULL that two stores given the same commands agree on: the
/// entries, the last generated and largest deleted IDs, how many entries were ever added, and
/// per consumer group its last delivered ID and pending entries (ID, consumer, delivery count),
/// per consumer its pending entries. Left out: times (delivery, seen, active), and what a
/// restored stream may not know (entries-read, lag) or lays out its own way (radix tree sizes).
fn stream_state(full: &Reply) -> Vec<Vec<u8>> {
    const STREAM: &[&[u8]] = &[
        b"last-generated-id",
        b"max-deleted-entry-id",
        b"entries-added",
        b"entries",
    ];
    const GROUP: &[&[u8]] = &[b"name", b"last-delivered-id", b"pel-count"];
    const CONSUMER: &[&[u8]] = &[b"name", b"pel-count"];
    let mut out = Vec::new();
    for (name, value) in pairs(full) {
        if STREAM.contains(&name) {
            keep(name, value, &mut out);
        } else if name == b"groups" {
            let mut groups: Vec<Vec<u8>> = items(value)
                .iter()
                .map(|group| {
                    let mut kept = Vec::new();
                    for (field, value) in pairs(group) {
                        if GROUP.contains(&field) {
                            keep(field, value, &mut kept);
                        } else if field == b"pending" {
                            // [id, consumer, delivery time, delivery count]
                            for entry in items(value) {
                                let entry = items(entry);
                                for at in [0, 1, 3] {
                                    if let Some(part) = entry.get(at) {
                                        keep(b"pending", part, &mut kept);
                                    }
                                }
                            }
                        } else if field == b"consumers" {
                            let mut consumers: Vec<Vec<u8>> = items(value)
                                .iter()
                                .map(|consumer| {
                                    let mut kept = Vec::new();
                                    for (field, value) in pairs(consumer) {
                                        if CONSUMER.contains(&field) {
                                            keep(field, value, &mut kept);
                                        } else if field == b"pending" {
                                            // [id, delivery time, delivery count]
                                            for entry in items(value) {
                                                let entry = items(entry);
                                                for at in [0, 2] {
                                                    if let Some(part) = entry.get(at) {
                                                        keep(b"pending", part, &mut kept);
                                                    }
                                                }
                                            }
                                        }
                                    }
                                    kept.concat()
                                })
                                .collect();
                            consumers.sort();
                            kept.push(consumers.concat());
                        }
                    }
                    kept.concat()
                })
                .collect();
            groups.sort();
            out.push(b"consumer groups".to_vec());
            out.extend(groups);
        }
    }
    out
}

fn items(reply: &Reply) -> &[Reply] {
    match reply {
        Reply::Array(items) => items,
        _ => &[],
    }
}

/// A flat `[name, value, name, value …]` reply as pairs.
fn pairs(reply: &Reply) -> impl Iterator<Item = (&[u8], &Reply)> {
    items(reply).chunks(2).filter_map(|pair| match pair {
        [name, value] => name.as_bytes().map(|name| (name, value)),
        _ => None,
    })
}

/// A field and its value, length-prefixed so that no two different ones join the same way.
fn keep(name: &[u8], value: &Reply, out: &mut Vec<Vec<u8>>) {
    let mut flat = Vec::new();
    flatten(value, &mut flat);
    let mut joined = (name.len() as u64).to_le_bytes().to_vec();
    joined.extend_from_slice(name);
    for part in flat {
        joined.extend_from_slice(&(part.len() as u64).to_le_bytes());
        joined.extend_from_slice(&part);
    }
    out.push(joined);
}

fn flatten(reply: &Reply, out: &mut Vec<Vec<u8>>) {
    match reply {
        Reply::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        Reply::Bulk(b) | Reply::Status(b) | Reply::Error(b) => out.push(b.clone()),
        Reply::Integer(n) => out.push(n.to_string().into_bytes()),
        Reply::Nil => out.push(Vec::new()),
    }
}

/// TTLs within a second are equal: they tick down between the reads of the two stores.
pub const DEFAULT_TTL_TOLERANCE_MS: i64 = 1000;

/// Whether each key is the same on both stores (type, value, TTL within a second; absent from
/// both counts as the same).
pub fn same_on_both(
    primary: &Store,
    secondary: &Store,
    keys: &[Vec<u8>],
    cancel: &CancelToken,
) -> Result<Vec<bool>> {
    let on_secondary = read(secondary, keys, cancel)?;
    let on_primary = read(primary, keys, cancel)?;
    Ok(on_secondary
        .iter()
        .zip(&on_primary)
        .map(|(s, p)| s.same_as(p, DEFAULT_TTL_TOLERANCE_MS))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    fn members(items: &[&str]) -> Reply {
        Reply::Array(items.iter().map(|s| bulk(s)).collect())
    }

    fn present(kind: &str, values: &[Reply], pttl: i64) -> KeyState {
        state(
            &Reply::Status(kind.as_bytes().to_vec()),
            &Reply::Integer(pttl),
            values,
        )
    }

    #[test]
    fn digests_do_not_depend_on_set_or_hash_order() {
        assert!(present("set", &[members(&["a", "b"])], -1)
            .same_as(&present("set", &[members(&["b", "a"])], -1), 0));
        assert!(
            present("hash", &[members(&["f1", "v1", "f2", "v2"])], -1).same_as(
                &present("hash", &[members(&["f2", "v2", "f1", "v1"])], -1),
                0
            )
        );
        assert!(!present("list", &[members(&["a", "b"])], -1)
            .same_as(&present("list", &[members(&["b", "a"])], -1), 0));
        assert!(!present("hash", &[members(&["f1", "v1"])], -1)
            .same_as(&present("hash", &[members(&["f1v", "1"])], -1), 0));
    }

    #[test]
    fn an_error_reply_is_never_the_same_as_anything() {
        let refused = |what: &str| {
            state(
                &Reply::Status(b"string".to_vec()),
                &Reply::Integer(-1),
                &[Reply::Error(what.as_bytes().to_vec())],
            )
        };
        let a = refused("NOPERM this user has no permissions to run the 'get' command");
        assert!(matches!(a, KeyState::Unreadable(_)));
        assert!(!a.same_as(&a.clone(), 1000));
        assert!(!a.same_as(&KeyState::Absent, 1000));
    }

    #[test]
    fn ttls_agree_within_the_tolerance_and_only_both_ways_without_expiry() {
        let v = [bulk("v")];
        assert!(present("string", &v, 10_000).same_as(&present("string", &v, 9_500), 1000));
        assert!(!present("string", &v, 10_000).same_as(&present("string", &v, 5_000), 1000));
        assert!(!present("string", &v, -1).same_as(&present("string", &v, 5_000), 1000));
    }

    #[test]
    fn streams_differ_by_their_consumer_groups_and_ids_but_not_by_times() {
        let full = |consumer: &str, deliveries: i64, last_id: &str, seen: i64| {
            Reply::Array(vec![
                bulk("length"),
                Reply::Integer(1),
                bulk("radix-tree-keys"),
                Reply::Integer(seen), // layout: left out
                bulk("last-generated-id"),
                bulk(last_id),
                bulk("entries"),
                Reply::Array(vec![Reply::Array(vec![bulk("1-0"), members(&["f", "v"])])]),
                bulk("groups"),
                Reply::Array(vec![Reply::Array(vec![
                    bulk("name"),
                    bulk("g"),
                    bulk("pel-count"),
                    Reply::Integer(1),
                    bulk("pending"),
                    Reply::Array(vec![Reply::Array(vec![
                        bulk("1-0"),
                        bulk(consumer),
                        Reply::Integer(seen), // delivery time: left out
                        Reply::Integer(deliveries),
                    ])]),
                    bulk("consumers"),
                    Reply::Array(vec![Reply::Array(vec![
                        bulk("name"),
                        bulk(consumer),
                        bulk("seen-time"),
                        Reply::Integer(seen),
                        bulk("pel-count"),
                        Reply::Integer(1),
                    ])]),
                ])]),
            ])
        };
        let stream =
            |c: &str, d: i64, id: &str, t: i64| present("stream", &[full(c, d, id, t)], -1);
        let base = stream("c1", 1, "1-0", 100);
        assert!(
            base.same_as(&stream("c1", 1, "1-0", 999), 0),
            "times do not count"
        );
        assert!(
            !base.same_as(&stream("c2", 1, "1-0", 100), 0),
            "another consumer owns it"
        );
        assert!(
            !base.same_as(&stream("c1", 2, "1-0", 100), 0),
            "delivered twice"
        );
        assert!(
            !base.same_as(&stream("c1", 1, "5-0", 100), 0),
            "another last ID"
        );
    }
}
