//! Where a command goes during a migration, decided from its kind and the feature flags. The
//! decision is data (`Route`), separate from the I/O, so it is tested without a server.

use crate::protocol::command::Command;
use crate::protocol::command_table::{CommandKind, CommandSpec};
use crate::protocol::reply::Reply;

/// The feature flags, read through the host application's callbacks before each call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// `use_primary_and_secondary_stores_for_<name>`: writes go to both stores.
    pub dual_write: bool,
    /// `use_primary_store_as_default_for_<name>`: the primary answers callers.
    pub primary_default: bool,
    /// Raise instead of report for commands not in the table (GitLab does so in dev and test).
    pub strict: bool,
}

impl Flags {
    pub const DUAL_WRITE: u32 = 1;
    pub const PRIMARY_DEFAULT: u32 = 2;
    pub const STRICT: u32 = 4;

    pub fn from_bits(bits: u32) -> Flags {
        Flags {
            dual_write: bits & Self::DUAL_WRITE != 0,
            primary_default: bits & Self::PRIMARY_DEFAULT != 0,
            strict: bits & Self::STRICT != 0,
        }
    }
}

/// How reads are served while dual-write is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStrategy {
    /// GitLab's original behaviour: read the primary; on a miss or an error, read the secondary.
    PrimaryWithFallback,
    /// GitLab's later behaviour: read the default store only.
    DefaultOnly,
}

/// Which of the two stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Secondary,
}

impl Role {
    pub fn other(self) -> Role {
        match self {
            Role::Primary => Role::Secondary,
            Role::Secondary => Role::Primary,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// One of something for each store, looked up by role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerRole<T> {
    pub primary: T,
    pub secondary: T,
}

impl<T> PerRole<T> {
    pub fn new(primary: T, secondary: T) -> Self {
        PerRole { primary, secondary }
    }

    /// `f` of each role.
    pub fn from_fn(f: impl Fn(Role) -> T) -> Self {
        PerRole::new(f(Role::Primary), f(Role::Secondary))
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        [&self.primary, &self.secondary].into_iter()
    }

    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> PerRole<U> {
        PerRole::new(f(&self.primary), f(&self.secondary))
    }
}

impl<T> std::ops::Index<Role> for PerRole<T> {
    type Output = T;

    fn index(&self, role: Role) -> &T {
        match role {
            Role::Primary => &self.primary,
            Role::Secondary => &self.secondary,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The default store only.
    Default,
    /// Both stores, in flight at once; the default store's reply is returned.
    Both,
    /// The primary, falling back to the secondary on a miss or an error.
    PrimaryWithFallback,
}

pub fn default_role(flags: Flags) -> Role {
    if flags.primary_default {
        Role::Primary
    } else {
        Role::Secondary
    }
}

/// `same_store`: both stores hold the same data (same server and db), so a write must never be
/// applied twice and a fallback could never find anything new.
pub fn route(
    cmd: &Command,
    spec: Option<&CommandSpec>,
    flags: Flags,
    strategy: ReadStrategy,
    same_store: bool,
) -> Route {
    let Some(spec) = spec else {
        return Route::Default;
    };
    if !flags.dual_write || same_store {
        return Route::Default;
    }
    // A blocking command sent to both stores would block on both; it runs on the default store
    // (and what it popped is then removed from the other one). A scan cursor belongs to one
    // server, so a scan cannot fall back to the other store half-way: scans stay on the default.
    if blocks(cmd, spec) || is_scan(spec) {
        return Route::Default;
    }
    // PING checks both stores while both are in use, as GitLab's MultiStore does.
    if spec.name == "ping" {
        return Route::Both;
    }
    match (spec.kind(), strategy) {
        (CommandKind::Write, _) => Route::Both,
        (CommandKind::Read, ReadStrategy::PrimaryWithFallback)
            if reads_named_keys_only(cmd, spec) =>
        {
            Route::PrimaryWithFallback
        }
        _ => Route::Default,
    }
}

/// Whether a read looks only at the keys it names. A primary that misses a key falls back to the
/// secondary per key; a read of the whole keyspace (KEYS, DBSIZE, RANDOMKEY) or of keys found by
/// a pattern (SORT_RO … BY/GET) would answer from the primary's partial keyspace without missing,
/// so it is the default store's to answer.
pub fn reads_named_keys_only(cmd: &Command, spec: &CommandSpec) -> bool {
    if spec.first_key <= 0 && !spec.has_flag(crate::protocol::command_table::flag::MOVABLEKEYS) {
        return false;
    }
    !(spec.name == "sort_ro"
        && cmd
            .args()
            .skip(2)
            .any(|arg| arg.eq_ignore_ascii_case(b"by") || arg.eq_ignore_ascii_case(b"get")))
}

/// Whether the command may wait on the server: Redis flags XREAD and XREADGROUP as blocking,
/// but they block only with a BLOCK argument; without one XREADGROUP is an ordinary write (it
/// delivers entries and records them as pending) that both stores must run.
pub fn blocks(cmd: &Command, spec: &CommandSpec) -> bool {
    if !spec.is_blocking() {
        return false;
    }
    if !matches!(spec.name, "xread" | "xreadgroup") {
        return true;
    }
    cmd.args()
        .skip(1)
        .take_while(|arg| !arg.eq_ignore_ascii_case(b"streams"))
        .any(|arg| arg.eq_ignore_ascii_case(b"block"))
}

fn is_scan(spec: &CommandSpec) -> bool {
    matches!(spec.name, "scan" | "sscan" | "hscan" | "zscan")
}

/// Whether a read's reply means "not there", which makes the primary fall back to the
/// secondary (GitLab's nil-or-empty check, per command): nil, an empty array or all nils
/// (MGET, HMGET), 0 for counts and existence checks of a missing key, -2 for the TTL of a
/// missing key. (Scans never fall back: see `route`.)
pub fn is_miss(spec: &CommandSpec, reply: &Reply) -> bool {
    match reply {
        Reply::Nil => true,
        Reply::Array(items) if ZEROS_WHEN_MISSING.contains(&spec.name) => {
            items.iter().all(|v| matches!(v, Reply::Integer(0)))
        }
        Reply::Array(items) => items.iter().all(|v| matches!(v, Reply::Nil)),
        Reply::Integer(0) => COUNTS_ZERO_WHEN_MISSING.contains(&spec.name),
        Reply::Integer(-1) => spec.name == "bitpos",
        Reply::Integer(-2) => TTL_MINUS_TWO_WHEN_MISSING.contains(&spec.name),
        Reply::Bulk(value) => value.is_empty() && EMPTY_WHEN_MISSING.contains(&spec.name),
        Reply::Status(kind) => spec.name == "type" && kind.as_slice() == b"none",
        _ => false,
    }
}

const COUNTS_ZERO_WHEN_MISSING: &[&str] = &[
    "bitcount",
    "bitpos",
    "exists",
    "getbit",
    "hexists",
    "hlen",
    "hstrlen",
    "llen",
    "pfcount",
    "scard",
    "sintercard",
    "sismember",
    "strlen",
    "xlen",
    "zcard",
    "zcount",
    "zintercard",
    "zlexcount",
];

/// Reads whose answer for a missing key is an empty string (a real value may be empty too: then
/// the secondary is asked for nothing).
const EMPTY_WHEN_MISSING: &[&str] = &["getrange", "lcs", "substr"];

/// Reads answering an array of zeros for a missing key.
const ZEROS_WHEN_MISSING: &[&str] = &["bitfield_ro", "smismember"];

const TTL_MINUS_TWO_WHEN_MISSING: &[&str] = &["expiretime", "pexpiretime", "pttl", "ttl"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::command_table::lookup;

    fn route_of(args: &[&str], flags: Flags) -> Route {
        let cmd = Command::from_args(args);
        route(
            &cmd,
            lookup(&cmd),
            flags,
            ReadStrategy::PrimaryWithFallback,
            false,
        )
    }

    const DUAL: Flags = Flags {
        dual_write: true,
        primary_default: false,
        strict: false,
    };

    #[test]
    fn flags_off_sends_everything_to_the_default_store() {
        for args in [
            &["set", "k", "v"][..],
            &["get", "k"],
            &["ping"],
            &["nosuch"],
        ] {
            assert_eq!(route_of(args, Flags::default()), Route::Default);
        }
    }

    #[test]
    fn dual_write_writes_both_and_reads_with_fallback() {
        assert_eq!(route_of(&["SET", "k", "v"], DUAL), Route::Both);
        assert_eq!(route_of(&["eval", "return 1", "0"], DUAL), Route::Both);
        assert_eq!(route_of(&["GET", "k"], DUAL), Route::PrimaryWithFallback);
        assert_eq!(route_of(&["ping"], DUAL), Route::Both);
        assert_eq!(route_of(&["info"], DUAL), Route::Default);
        assert_eq!(route_of(&["keys", "*"], DUAL), Route::Default);
        assert_eq!(route_of(&["dbsize"], DUAL), Route::Default);
        assert_eq!(
            route_of(&["sort_ro", "k", "by", "w_*"], DUAL),
            Route::Default
        );
        assert_eq!(
            route_of(&["sort_ro", "k", "alpha"], DUAL),
            Route::PrimaryWithFallback
        );
        assert_eq!(route_of(&["sscan", "s", "0"], DUAL), Route::Default);
        assert_eq!(route_of(&["blpop", "k", "0"], DUAL), Route::Default);
    }

    #[test]
    fn a_stream_read_blocks_only_with_block() {
        let group_read = ["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"];
        assert_eq!(route_of(&group_read, DUAL), Route::Both);
        let blocking = [
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "0",
            "STREAMS",
            "s",
            ">",
        ];
        assert_eq!(route_of(&blocking, DUAL), Route::Default);
        // A stream named "block" does not make it block.
        let named_block = ["xreadgroup", "group", "g", "c", "streams", "block", ">"];
        assert_eq!(route_of(&named_block, DUAL), Route::Both);
        assert_eq!(
            route_of(&["xread", "streams", "s", "0"], DUAL),
            Route::PrimaryWithFallback
        );
    }

    #[test]
    fn default_only_strategy_and_same_store() {
        let get = Command::from_args(["get", "k"]);
        assert_eq!(
            route(&get, lookup(&get), DUAL, ReadStrategy::DefaultOnly, false),
            Route::Default
        );
        let set = Command::from_args(["set", "k", "v"]);
        assert_eq!(
            route(
                &set,
                lookup(&set),
                DUAL,
                ReadStrategy::PrimaryWithFallback,
                true
            ),
            Route::Default
        );
    }

    #[test]
    fn misses_follow_gitlabs_nil_or_empty_rules() {
        let spec = |name: &str| lookup(&Command::from_args([name])).unwrap();
        assert!(is_miss(spec("get"), &Reply::Nil));
        assert!(is_miss(
            spec("mget"),
            &Reply::Array(vec![Reply::Nil, Reply::Nil])
        ));
        assert!(!is_miss(
            spec("mget"),
            &Reply::Array(vec![Reply::Nil, Reply::Integer(1)])
        ));
        assert!(is_miss(spec("smembers"), &Reply::Array(vec![])));
        assert!(is_miss(spec("scard"), &Reply::Integer(0)));
        assert!(!is_miss(spec("incr"), &Reply::Integer(0)));
        assert!(is_miss(spec("ttl"), &Reply::Integer(-2)));
        assert!(!is_miss(spec("ttl"), &Reply::Integer(-1)));
        assert!(is_miss(spec("type"), &Reply::Status(b"none".to_vec())));
        assert!(!is_miss(spec("type"), &Reply::Status(b"hash".to_vec())));
        assert!(is_miss(spec("getrange"), &Reply::Bulk(Vec::new())));
        assert!(
            !is_miss(spec("get"), &Reply::Bulk(Vec::new())),
            "an empty string is a value"
        );
        assert!(is_miss(
            spec("smismember"),
            &Reply::Array(vec![Reply::Integer(0), Reply::Integer(0)])
        ));
        assert!(is_miss(spec("zcount"), &Reply::Integer(0)));
    }
}
