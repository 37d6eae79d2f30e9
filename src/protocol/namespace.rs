//! A store inside a key namespace, as `Redis::Namespace` keeps one: every key a command names is
//! sent as `<namespace>:<key>`, found by the command table's key positions (so every command
//! with keys is covered, including those redis-namespace does not know); KEYS and SCAN patterns
//! are confined to the namespace, SORT's BY and GET patterns too, pub/sub channels are prefixed;
//! and key names in replies (KEYS, SCAN, BLPOP, LMPOP, XREAD, subscription messages) come back
//! without the prefix. Applied on each connection of the store, so everything above it --
//! dual writes, the journal, re-sync, backfill, verify -- works with the caller's key names,
//! and two stores in different namespaces migrate a partition from one to the other.
//!
//! Commands that act on the whole database (FLUSHDB, DBSIZE, RANDOMKEY, SWAPDB, MIGRATE …) or
//! that name keys the table cannot place are refused before anything is sent: run inside a
//! namespace they would reach, or count, other partitions' keys.

use crate::error::{Error, Result};
use crate::protocol::command::Command;
use crate::protocol::command_table;
use crate::protocol::reply::Reply;

/// How the key names in a command's reply come back to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyKeys {
    /// Nothing to un-prefix.
    Untouched,
    /// An array of keys (KEYS).
    All,
    /// `[cursor, [keys]]` (SCAN).
    Scan,
    /// `[key, …]` or nil (BLPOP, BZPOPMIN, BLMPOP, LMPOP, ZMPOP).
    First,
    /// `[[key, entries], …]` or nil (XREAD, XREADGROUP).
    Streams,
    /// Subscription replies and messages: `[kind, channel or pattern, …]`.
    PubSub,
    /// `[channel, count, channel, count …]` (PUBSUB NUMSUB).
    EveryOther,
    /// EXEC: each reply as its queued command's.
    Transaction(Vec<ReplyKeys>),
}

/// Commands refused inside a namespace, though the table knows them: they act on the whole
/// database, or carry keys where the table does not look.
const WHOLE_DATABASE: &[&str] = &[
    "flushdb",
    "flushall",
    "dbsize",
    "randomkey",
    "swapdb",
    "migrate",
    // DEBUG OBJECT names a key, DEBUG RELOAD … the whole server: none belongs to a namespace.
    "debug",
];

const SUBSCRIBING: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
    "ssubscribe",
    "sunsubscribe",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// `<namespace>:`
    prefix: Vec<u8>,
}

impl Namespace {
    pub fn new(name: &[u8]) -> Namespace {
        let mut prefix = name.to_vec();
        prefix.push(b':');
        Namespace { prefix }
    }

    /// The namespace's name, without the separator.
    pub fn name(&self) -> &[u8] {
        &self.prefix[..self.prefix.len() - 1]
    }

    /// Whether this namespace's keys are also keys of `outer` ("cache:v2" within "cache", and
    /// a namespace within itself).
    pub fn within(&self, outer: &Namespace) -> bool {
        self.prefix.starts_with(&outer.prefix)
    }

    /// The command as sent inside the namespace, and how to read its reply.
    pub fn command(&self, cmd: &Command) -> Result<(Command, ReplyKeys)> {
        let name = cmd.name().to_ascii_lowercase();
        let mut args: Vec<Vec<u8>> = cmd.args().map(<[u8]>::to_vec).collect();
        let refused = || Error::NotNamespaced(name.clone());
        if SUBSCRIBING.contains(&name.as_str()) {
            args.iter_mut()
                .skip(1)
                .for_each(|channel| self.prefix_in_place(channel));
            return Ok((Command::from_args(args), ReplyKeys::PubSub));
        }
        if name == "publish" || name == "spublish" {
            if let Some(channel) = args.get_mut(1) {
                self.prefix_in_place(channel);
            }
            return Ok((Command::from_args(args), ReplyKeys::Untouched));
        }
        let Some(spec) = command_table::lookup(cmd) else {
            return Err(refused());
        };
        if WHOLE_DATABASE.contains(&spec.name) {
            return Err(refused());
        }
        let reply = match spec.name {
            "keys" => {
                if let Some(pattern) = args.get_mut(1) {
                    self.prefix_in_place(pattern);
                }
                return Ok((Command::from_args(args), ReplyKeys::All));
            }
            "scan" => {
                self.confine_scan(&mut args);
                return Ok((Command::from_args(args), ReplyKeys::Scan));
            }
            "pubsub|channels" | "pubsub|shardchannels" => {
                match args.get_mut(2) {
                    Some(pattern) => self.prefix_in_place(pattern),
                    None => args.push(self.everything()),
                }
                return Ok((Command::from_args(args), ReplyKeys::All));
            }
            "pubsub|numsub" | "pubsub|shardnumsub" => {
                args.iter_mut()
                    .skip(2)
                    .for_each(|channel| self.prefix_in_place(channel));
                return Ok((Command::from_args(args), ReplyKeys::EveryOther));
            }
            "blpop" | "brpop" | "bzpopmin" | "bzpopmax" | "blmpop" | "bzmpop" | "lmpop"
            | "zmpop" => ReplyKeys::First,
            "xread" | "xreadgroup" => ReplyKeys::Streams,
            _ => ReplyKeys::Untouched,
        };
        let Some(positions) = command_table::key_positions(cmd, spec) else {
            return Err(refused());
        };
        for at in positions {
            if let Some(key) = args.get_mut(at) {
                self.prefix_in_place(key);
            }
        }
        if matches!(spec.name, "sort" | "sort_ro") {
            self.prefix_sort_patterns(&mut args);
        }
        Ok((Command::from_args(args), reply))
    }

    /// Takes the namespace off the key names in `reply`.
    pub fn reply(&self, reply: Reply, keys: ReplyKeys) -> Reply {
        match (keys, reply) {
            (ReplyKeys::Untouched, reply) => reply,
            (ReplyKeys::All, Reply::Array(items)) => {
                Reply::Array(items.into_iter().map(|k| self.strip(k)).collect())
            }
            (ReplyKeys::Scan, Reply::Array(mut items)) => {
                if let Some(Reply::Array(keys)) = items.get_mut(1) {
                    let stripped = std::mem::take(keys).into_iter().map(|k| self.strip(k));
                    *keys = stripped.collect();
                }
                Reply::Array(items)
            }
            (ReplyKeys::First, Reply::Array(mut items)) => {
                if let Some(first) = items.first_mut() {
                    *first = self.strip(std::mem::replace(first, Reply::Nil));
                }
                Reply::Array(items)
            }
            (ReplyKeys::Streams, Reply::Array(streams)) => Reply::Array(
                streams
                    .into_iter()
                    .map(|stream| self.reply(stream, ReplyKeys::First))
                    .collect(),
            ),
            (ReplyKeys::EveryOther, Reply::Array(items)) => Reply::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| if i % 2 == 0 { self.strip(item) } else { item })
                    .collect(),
            ),
            (ReplyKeys::Transaction(queued), Reply::Array(replies)) => Reply::Array(
                replies
                    .into_iter()
                    .zip(
                        queued
                            .into_iter()
                            .chain(std::iter::repeat(ReplyKeys::Untouched)),
                    )
                    .map(|(reply, keys)| self.reply(reply, keys))
                    .collect(),
            ),
            (ReplyKeys::PubSub, Reply::Array(mut items)) => {
                // ["message", channel, payload], ["pmessage", pattern, channel, payload],
                // ["subscribe", channel, count] …: the names sit between the kind and the last.
                let last = items.len().saturating_sub(1);
                for item in items.iter_mut().take(last).skip(1) {
                    *item = self.strip(std::mem::replace(item, Reply::Nil));
                }
                Reply::Array(items)
            }
            (_, reply) => reply,
        }
    }

    fn prefix_in_place(&self, key: &mut Vec<u8>) {
        key.splice(0..0, self.prefix.iter().copied());
    }

    fn strip(&self, reply: Reply) -> Reply {
        match reply {
            Reply::Bulk(key) if key.starts_with(&self.prefix) => {
                Reply::Bulk(key[self.prefix.len()..].to_vec())
            }
            other => other,
        }
    }

    /// SCAN is confined to the namespace: every MATCH pattern is prefixed (Redis uses the last),
    /// or one added. Options are read one by one: a pattern may be the word "match".
    fn confine_scan(&self, args: &mut Vec<Vec<u8>>) {
        let mut matched = false;
        let mut i = 2;
        while i + 1 < args.len() {
            if args[i].eq_ignore_ascii_case(b"match") {
                self.prefix_in_place(&mut args[i + 1]);
                matched = true;
            }
            i += 2; // MATCH, COUNT and TYPE each take one argument
        }
        if !matched {
            args.push(b"MATCH".to_vec());
            args.push(self.everything());
        }
    }

    fn everything(&self) -> Vec<u8> {
        let mut pattern = self.prefix.clone();
        pattern.push(b'*');
        pattern
    }

    /// SORT's BY and GET patterns name keys too ("#", the element itself, does not).
    fn prefix_sort_patterns(&self, args: &mut [Vec<u8>]) {
        let mut i = 2;
        while i + 1 < args.len() {
            let option = &args[i];
            let names_keys = option.eq_ignore_ascii_case(b"by")
                || (option.eq_ignore_ascii_case(b"get") && args[i + 1] != b"#");
            if names_keys {
                self.prefix_in_place(&mut args[i + 1]);
                i += 2;
            } else if option.eq_ignore_ascii_case(b"limit") {
                i += 3;
            } else if option.eq_ignore_ascii_case(b"get") || option.eq_ignore_ascii_case(b"store") {
                i += 2; // GET #, or STORE's destination (a key, prefixed by its position)
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(ns: &Namespace, args: &[&str]) -> Vec<String> {
        let (cmd, _) = ns
            .command(&Command::from_args(args))
            .unwrap_or_else(|e| panic!("{args:?} refused: {e}"));
        cmd.args()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    #[test]
    fn prefixes_keys_where_the_command_table_places_them() {
        let ns = Namespace::new(b"app");
        assert_eq!(sent(&ns, &["SET", "k", "v"]), ["SET", "app:k", "v"]);
        assert_eq!(
            sent(&ns, &["MSET", "a", "1", "b", "2"]),
            ["MSET", "app:a", "1", "app:b", "2"]
        );
        assert_eq!(
            sent(&ns, &["EVAL", "return 1", "2", "a", "b", "argv"]),
            ["EVAL", "return 1", "2", "app:a", "app:b", "argv"]
        );
        assert_eq!(
            sent(
                &ns,
                &["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]
            ),
            [
                "ZUNIONSTORE",
                "app:d",
                "2",
                "app:a",
                "app:b",
                "WEIGHTS",
                "1",
                "2"
            ]
        );
        assert_eq!(
            sent(
                &ns,
                &["XREAD", "COUNT", "1", "STREAMS", "s1", "s2", "0", "0"]
            ),
            ["XREAD", "COUNT", "1", "STREAMS", "app:s1", "app:s2", "0", "0"]
        );
        assert_eq!(sent(&ns, &["PING"]), ["PING"]);
    }

    #[test]
    fn confines_patterns_to_the_namespace() {
        let ns = Namespace::new(b"app");
        assert_eq!(sent(&ns, &["KEYS", "user:*"]), ["KEYS", "app:user:*"]);
        assert_eq!(sent(&ns, &["SCAN", "0"]), ["SCAN", "0", "MATCH", "app:*"]);
        assert_eq!(
            sent(&ns, &["SCAN", "0", "MATCH", "u*", "COUNT", "10"]),
            ["SCAN", "0", "MATCH", "app:u*", "COUNT", "10"]
        );
        assert_eq!(
            sent(
                &ns,
                &["SORT", "l", "BY", "w_*", "GET", "#", "GET", "o_*", "STORE", "d"]
            ),
            ["SORT", "app:l", "BY", "app:w_*", "GET", "#", "GET", "app:o_*", "STORE", "app:d"]
        );
    }

    #[test]
    fn refuses_what_would_reach_other_partitions() {
        let ns = Namespace::new(b"app");
        for args in [
            &["FLUSHDB"][..],
            &["DBSIZE"],
            &["RANDOMKEY"],
            &["NOSUCHCOMMAND", "k"],
        ] {
            let refused = ns.command(&Command::from_args(args));
            assert!(matches!(refused, Err(Error::NotNamespaced(_))), "{args:?}");
        }
    }

    #[test]
    fn takes_the_namespace_off_keys_in_replies() {
        let ns = Namespace::new(b"app");
        let keys = Reply::Array(vec![bulk("app:a"), bulk("app:b")]);
        assert_eq!(
            ns.reply(keys, ReplyKeys::All),
            Reply::Array(vec![bulk("a"), bulk("b")])
        );
        let scan = Reply::Array(vec![bulk("0"), Reply::Array(vec![bulk("app:a")])]);
        assert_eq!(
            ns.reply(scan, ReplyKeys::Scan),
            Reply::Array(vec![bulk("0"), Reply::Array(vec![bulk("a")])])
        );
        let popped = Reply::Array(vec![bulk("app:q"), bulk("x")]);
        assert_eq!(
            ns.reply(popped, ReplyKeys::First),
            Reply::Array(vec![bulk("q"), bulk("x")])
        );
        assert_eq!(ns.reply(Reply::Nil, ReplyKeys::First), Reply::Nil);
        let message = Reply::Array(vec![bulk("message"), bulk("app:ch"), bulk("app:payload")]);
        assert_eq!(
            ns.reply(message, ReplyKeys::PubSub),
            Reply::Array(vec![bulk("message"), bulk("ch"), bulk("app:payload")])
        );
    }
}
