//! Every Redis command the core knows, with the flags Redis itself declares for it, so routing
//! never needs a round trip and never relies on a hand-kept list. The table is generated from a
//! live `COMMAND` (script/generate_command_table.rb) and checked against one in the tests.

use crate::protocol::command::Command;
use std::cmp::Ordering;

#[path = "command_table/redis_7_0.rs"]
mod generated;

pub use generated::REDIS_VERSION;

/// Redis's command flags (`COMMAND INFO`), one bit each.
pub mod flag {
    pub const WRITE: u32 = 1 << 0;
    pub const READONLY: u32 = 1 << 1;
    pub const DENYOOM: u32 = 1 << 2;
    pub const ADMIN: u32 = 1 << 3;
    pub const PUBSUB: u32 = 1 << 4;
    pub const NOSCRIPT: u32 = 1 << 5;
    pub const BLOCKING: u32 = 1 << 6;
    pub const LOADING: u32 = 1 << 7;
    pub const STALE: u32 = 1 << 8;
    pub const SKIP_MONITOR: u32 = 1 << 9;
    pub const SKIP_SLOWLOG: u32 = 1 << 10;
    pub const FAST: u32 = 1 << 11;
    pub const NO_AUTH: u32 = 1 << 12;
    pub const MAY_REPLICATE: u32 = 1 << 13;
    pub const NO_MANDATORY_KEYS: u32 = 1 << 14;
    pub const NO_ASYNC_LOADING: u32 = 1 << 15;
    pub const NO_MULTI: u32 = 1 << 16;
    pub const MOVABLEKEYS: u32 = 1 << 17;
    pub const ALLOW_BUSY: u32 = 1 << 18;
    pub const ASKING: u32 = 1 << 19;

    /// The bit of a flag as `COMMAND` names it.
    pub fn from_name(name: &str) -> Option<u32> {
        Some(match name {
            "write" => WRITE,
            "readonly" => READONLY,
            "denyoom" => DENYOOM,
            "admin" => ADMIN,
            "pubsub" => PUBSUB,
            "noscript" => NOSCRIPT,
            "blocking" => BLOCKING,
            "loading" => LOADING,
            "stale" => STALE,
            "skip_monitor" => SKIP_MONITOR,
            "skip_slowlog" => SKIP_SLOWLOG,
            "fast" => FAST,
            "no_auth" => NO_AUTH,
            "may_replicate" => MAY_REPLICATE,
            "no_mandatory_keys" => NO_MANDATORY_KEYS,
            "no_async_loading" => NO_ASYNC_LOADING,
            "no_multi" => NO_MULTI,
            "movablekeys" => MOVABLEKEYS,
            "allow_busy" => ALLOW_BUSY,
            "asking" => ASKING,
            _ => return None,
        })
    }
}

#[derive(Debug)]
pub struct CommandSpec {
    pub name: &'static str,
    pub arity: i32,
    pub flags: u32,
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    pub has_subcommands: bool,
}

/// What a command does to the data, which decides where it is sent during a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Changes data: sent to both stores while dual-write is on.
    Write,
    /// Only reads data: the read strategy applies.
    Read,
    /// Neither (connection, server, pub/sub subscription commands): default store only.
    Other,
}

/// Commands whose Redis flags do not say what a migration needs:
/// - scripts and functions may write, and Redis cannot tell which keys they touch, so they
///   are written to both stores like any write (GitLab's MultiStore does the same for EVAL);
///   loading a script or function goes to both so EVALSHA/FCALL then work on either;
/// - PUBLISH goes to both so subscribers on either store receive it while both are in use.
const WRITES_BY_POLICY: &[&str] = &[
    "eval",
    "evalsha",
    "fcall",
    "function|delete",
    "function|flush",
    "function|load",
    "function|restore",
    "publish",
    "script|flush",
    "script|load",
    "spublish",
];

impl CommandSpec {
    pub fn kind(&self) -> CommandKind {
        if self.flags & flag::WRITE != 0 || WRITES_BY_POLICY.contains(&self.name) {
            CommandKind::Write
        } else if self.flags & flag::READONLY != 0 {
            CommandKind::Read
        } else {
            CommandKind::Other
        }
    }

    pub fn is_blocking(&self) -> bool {
        self.flags & flag::BLOCKING != 0
    }

    /// Whether running the command twice leaves the server as running it once: it writes
    /// nothing, publishes nothing, administers nothing and runs no script (PING, GET, INFO …).
    pub fn safe_to_repeat(&self) -> bool {
        self.kind() != CommandKind::Write
            && self.flags
                & (flag::PUBSUB
                    | flag::ADMIN
                    | flag::BLOCKING
                    | flag::MAY_REPLICATE
                    | flag::NOSCRIPT)
                == 0
    }

    pub fn has_flag(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

/// The spec of a command, resolving `CONFIG GET` to `config|get`. A container command with an
/// unknown subcommand resolves to the container itself (kind `Other`): the server will reject it.
pub fn lookup(cmd: &Command) -> Option<&'static CommandSpec> {
    let name = cmd.arg(0)?;
    let spec = find(generated::COMMANDS, name)?;
    if !spec.has_subcommands {
        return Some(spec);
    }
    let Some(sub) = cmd.arg(1) else {
        return Some(spec);
    };
    let mut full = Vec::with_capacity(name.len() + 1 + sub.len());
    full.extend_from_slice(name);
    full.push(b'|');
    full.extend_from_slice(sub);
    Some(find(generated::SUBCOMMANDS, &full).unwrap_or(spec))
}

pub fn commands() -> &'static [CommandSpec] {
    generated::COMMANDS
}

pub fn subcommands() -> &'static [CommandSpec] {
    generated::SUBCOMMANDS
}

/// Whether the command replaces every key it names whatever was there before (SET, DEL, MSET …),
/// so the keys' earlier presence on a store cannot leave a part of them behind.
pub fn replaces_whole_keys(cmd: &Command, spec: &CommandSpec) -> bool {
    match spec.name {
        "del" | "unlink" | "getdel" | "mset" | "setex" | "psetex" => true,
        // SET without NX, XX, GET or KEEPTTL (whose effect or answer depends on what was there).
        "set" => !cmd.args().skip(3).any(|arg| {
            [&b"nx"[..], b"xx", b"get", b"keepttl"]
                .iter()
                .any(|option| arg.eq_ignore_ascii_case(option))
        }),
        _ => false,
    }
}

/// The keys a command touches, from Redis's key positions (first, last, step), and for the
/// commands whose keys move (`movablekeys`) from their own syntax. `None` when they cannot be
/// named (FLUSHDB, a command this function does not know how to read).
pub fn keys<'c>(cmd: &'c Command, spec: &CommandSpec) -> Option<Vec<&'c [u8]>> {
    key_positions(cmd, spec)?
        .into_iter()
        .map(|at| cmd.arg(at))
        .collect()
}

/// Where `keys` finds the keys: indexes into the command's arguments (the name is 0).
pub fn key_positions(cmd: &Command, spec: &CommandSpec) -> Option<Vec<usize>> {
    let args: Vec<&[u8]> = cmd.args().collect();
    let numkeys_at = |at: usize| -> Option<Vec<usize>> {
        let n: usize = std::str::from_utf8(cmd.arg(at)?).ok()?.parse().ok()?;
        let keys: Vec<usize> = (at + 1..at + 1 + n).collect();
        keys.iter().all(|&i| i < args.len()).then_some(keys)
    };
    if spec.has_flag(flag::MOVABLEKEYS) {
        return match spec.name {
            "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => numkeys_at(2),
            "zunion" | "zinter" | "zdiff" | "sintercard" | "zintercard" | "lmpop" | "zmpop" => {
                numkeys_at(1)
            }
            "blmpop" | "bzmpop" => numkeys_at(2),
            "zunionstore" | "zinterstore" | "zdiffstore" => {
                let mut keys = vec![1];
                keys.extend(numkeys_at(2)?);
                (args.len() > 1).then_some(keys)
            }
            "xread" | "xreadgroup" => {
                let streams = streams_at(&args, spec.name == "xreadgroup")?;
                let count = (args.len() - streams - 1) / 2;
                Some((streams + 1..streams + 1 + count).collect())
            }
            "sort" | "sort_ro" => {
                let mut keys = vec![1];
                keys.extend(sort_store_at(&args));
                (args.len() > 1).then_some(keys)
            }
            "georadius" | "georadiusbymember" => {
                // GEORADIUS key lon lat radius unit …, GEORADIUSBYMEMBER key member radius unit …
                let options = if spec.name == "georadius" { 6 } else { 5 };
                let mut keys = vec![1];
                keys.extend(geo_store_at(&args, options));
                (args.len() > 1).then_some(keys)
            }
            _ => None,
        };
    }
    if spec.first_key <= 0 {
        // Commands that write without naming keys change the whole database.
        return if spec.kind() == CommandKind::Write && !WRITES_BY_POLICY.contains(&spec.name) {
            None
        } else {
            Some(Vec::new())
        };
    }
    let last = if spec.last_key < 0 {
        args.len() as i32 + spec.last_key
    } else {
        spec.last_key
    };
    let step = spec.step.max(1) as usize;
    Some(
        (spec.first_key as usize..=last.max(0) as usize)
            .step_by(step)
            .filter(|&i| i < args.len())
            .collect(),
    )
}

/// Whether the command writes a key of another database (MOVE, COPY … DB n, SWAPDB): the
/// journal, which names keys of the database a call runs in, cannot say which store misses what
/// there -- only a full verify of every database can.
pub fn writes_other_database(cmd: &Command) -> bool {
    cmd.name_is("move")
        || cmd.name_is("swapdb")
        || (cmd.name_is("copy")
            && cmd
                .args()
                .skip(3)
                .any(|arg| arg.eq_ignore_ascii_case(b"db")))
}

/// Where STREAMS is among XREAD's / XREADGROUP's options: read option by option (a group or
/// consumer may be named "streams").
fn streams_at(args: &[&[u8]], group: bool) -> Option<usize> {
    let mut i = if group { 4 } else { 1 }; // XREADGROUP GROUP g c …
    while i < args.len() {
        let option = args[i];
        if option.eq_ignore_ascii_case(b"streams") {
            return Some(i);
        }
        i += if option.eq_ignore_ascii_case(b"count") || option.eq_ignore_ascii_case(b"block") {
            2
        } else {
            1
        };
    }
    None
}

/// SORT key [BY pattern] [LIMIT offset count] [GET pattern …] [ASC|DESC] [ALPHA] [STORE dest]:
/// the destination, read option by option (a pattern or key may be named "store"; the last
/// STORE wins, as in Redis).
pub(crate) fn sort_store_at(args: &[&[u8]]) -> Option<usize> {
    sort_options(args).store
}

/// What SORT's options say about keys: where its STORE destination is, and whether a BY or GET
/// pattern (one with `*`; without, Redis looks nothing up) makes it read keys it does not name.
struct SortOptions {
    store: Option<usize>,
    reads_by_pattern: bool,
}

fn sort_options(args: &[&[u8]]) -> SortOptions {
    let mut options = SortOptions {
        store: None,
        reads_by_pattern: false,
    };
    let mut i = 2;
    while i < args.len() {
        let option = args[i];
        let skip = if option.eq_ignore_ascii_case(b"by") || option.eq_ignore_ascii_case(b"get") {
            options.reads_by_pattern |= args.get(i + 1).is_some_and(|p| p.contains(&b'*'));
            2
        } else if option.eq_ignore_ascii_case(b"limit") {
            3
        } else if option.eq_ignore_ascii_case(b"store") {
            options.store = Some(i + 1).filter(|&at| at < args.len());
            2
        } else {
            1
        };
        i += skip;
    }
    options
}

/// Whether the command reads keys it does not name, so that no key list says what it read:
/// SORT / SORT_RO with a BY or GET pattern.
pub fn reads_unnamed_keys(cmd: &Command) -> bool {
    (cmd.name_is("sort") || cmd.name_is("sort_ro")) && {
        let args: Vec<&[u8]> = cmd.args().collect();
        sort_options(&args).reads_by_pattern
    }
}

/// GEORADIUS's STORE / STOREDIST destination (the last one given), from its options on.
fn geo_store_at(args: &[&[u8]], options: usize) -> Option<usize> {
    let mut store = None;
    let mut i = options;
    while i < args.len() {
        let option = args[i];
        let skip =
            if option.eq_ignore_ascii_case(b"store") || option.eq_ignore_ascii_case(b"storedist") {
                store = Some(i + 1).filter(|&at| at < args.len());
                2
            } else if option.eq_ignore_ascii_case(b"count") {
                2
            } else {
                1
            };
        i += skip;
    }
    store
}

/// Binary search by name, ignoring the case of the caller's spelling (table names are lower case).
fn find(table: &'static [CommandSpec], name: &[u8]) -> Option<&'static CommandSpec> {
    table
        .binary_search_by(|spec| compare_lowercase(spec.name.as_bytes(), name))
        .ok()
        .map(|i| &table[i])
}

fn compare_lowercase(table_name: &[u8], name: &[u8]) -> Ordering {
    let pairs = table_name.iter().zip(name.iter());
    for (a, b) in pairs {
        match a.cmp(&b.to_ascii_lowercase()) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    table_name.len().cmp(&name.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(args: &[&str]) -> Option<CommandKind> {
        lookup(&Command::from_args(args)).map(CommandSpec::kind)
    }

    #[test]
    fn a_sort_with_a_by_or_get_pattern_reads_keys_it_does_not_name() {
        let reads = |args: &[&str]| reads_unnamed_keys(&Command::from_args(args));
        assert!(reads(&["SORT", "ids", "GET", "w_*", "STORE", "d"]));
        assert!(reads(&["sort_ro", "ids", "BY", "weight_*->f"]));
        assert!(reads(&[
            "SORT", "ids", "LIMIT", "0", "1", "get", "#", "GET", "*"
        ]));
        // Without `*` Redis looks nothing up ("#" is the element itself, BY nosort skips).
        assert!(!reads(&[
            "SORT", "ids", "GET", "#", "BY", "nosort", "STORE", "d"
        ]));
        assert!(!reads(&["SORT", "ids", "ALPHA", "STORE", "*"]));
        assert!(!reads(&["SUNIONSTORE", "d", "GET", "*"]));
    }

    fn key_names(args: &[&str]) -> Option<Vec<String>> {
        let cmd = Command::from_args(args);
        let spec = lookup(&cmd)?;
        keys(&cmd, spec).map(|keys| {
            keys.iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        })
    }

    #[test]
    fn reads_options_one_by_one_where_a_name_could_be_an_option_word() {
        assert_eq!(
            key_names(&["SORT", "l", "GET", "store", "ALPHA", "STORE", "a", "STORE", "dst"]),
            Some(vec!["l".into(), "dst".into()])
        );
        assert_eq!(
            key_names(&["SORT", "store", "ALPHA"]),
            Some(vec!["store".into()])
        );
        assert_eq!(
            key_names(&[
                "GEORADIUSBYMEMBER",
                "shops",
                "store",
                "100",
                "km",
                "STORE",
                "a",
                "STOREDIST",
                "d"
            ]),
            Some(vec!["shops".into(), "d".into()])
        );
        assert_eq!(
            key_names(&[
                "XREADGROUP",
                "GROUP",
                "streams",
                "c",
                "COUNT",
                "1",
                "STREAMS",
                "s",
                ">"
            ]),
            Some(vec!["s".into()])
        );
    }

    #[test]
    fn classifies_by_redis_flags_in_any_case() {
        assert_eq!(kind_of(&["GET", "k"]), Some(CommandKind::Read));
        assert_eq!(kind_of(&["set", "k", "v"]), Some(CommandKind::Write));
        assert_eq!(kind_of(&["HgetAll", "h"]), Some(CommandKind::Read));
        assert_eq!(kind_of(&["ping"]), Some(CommandKind::Other));
        assert_eq!(kind_of(&["nosuchcommand"]), None);
    }

    #[test]
    fn resolves_subcommands_and_policy_writes() {
        assert_eq!(
            kind_of(&["CONFIG", "GET", "maxmemory"]),
            Some(CommandKind::Other)
        );
        assert_eq!(
            kind_of(&["object", "encoding", "k"]),
            Some(CommandKind::Read)
        );
        assert_eq!(
            kind_of(&["xgroup", "create", "s", "g", "$"]),
            Some(CommandKind::Write)
        );
        assert_eq!(
            kind_of(&["script", "load", "return 1"]),
            Some(CommandKind::Write)
        );
        assert_eq!(
            kind_of(&["eval", "return 1", "0"]),
            Some(CommandKind::Write)
        );
        assert_eq!(
            kind_of(&["eval_ro", "return 1", "0"]),
            Some(CommandKind::Read)
        );
        assert_eq!(kind_of(&["publish", "c", "m"]), Some(CommandKind::Write));
        assert_eq!(kind_of(&["config", "nosuch"]), Some(CommandKind::Other));
    }

    #[test]
    fn tables_are_sorted_for_binary_search() {
        for table in [commands(), subcommands()] {
            assert!(table.windows(2).all(|w| w[0].name < w[1].name));
        }
    }

    #[test]
    fn names_the_keys_a_command_touches() {
        let keys_of = |args: &[&str]| {
            let cmd = Command::from_args(args);
            let spec = lookup(&cmd).unwrap();
            keys(&cmd, spec).map(|k| {
                k.into_iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(keys_of(&["set", "k", "v"]), Some(vec!["k".into()]));
        assert_eq!(
            keys_of(&["mset", "a", "1", "b", "2"]),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            keys_of(&["del", "a", "b"]),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            keys_of(&["eval", "return 1", "2", "x", "y", "arg"]),
            Some(vec!["x".into(), "y".into()])
        );
        assert_eq!(
            keys_of(&["zunionstore", "d", "2", "a", "b"]),
            Some(vec!["d".into(), "a".into(), "b".into()])
        );
        assert_eq!(keys_of(&["flushdb"]), None);
        assert_eq!(keys_of(&["ping"]), Some(vec![]));
    }

    #[test]
    fn knows_blocking_commands() {
        let blpop = lookup(&Command::from_args(["blpop", "k", "0"])).map(CommandSpec::is_blocking);
        assert_eq!(blpop, Some(true));
    }
}
