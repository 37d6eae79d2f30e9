//! Lua scripts seen through a MultiStore, by SHA1, so an EVALSHA that the non-default store
//! does not know (it was loaded before dual-write began, or the store restarted) is recovered
//! by loading the script there, instead of leaving that store without the write.

use crate::fork::ForkSafeMutex;
use crate::protocol::command::Command;
use std::collections::HashMap;

/// Commands whose answer is random, the time, or in each server's own hash order (a big set's
/// members, a hash's fields, the keyspace): a script calling one may write something else on
/// each store, while answering both alike. Looked for as whole words, however quoted.
const NONDETERMINISTIC: &[&str] = &[
    "spop",
    "srandmember",
    "hrandfield",
    "zrandmember",
    "randomkey",
    "time",
    "smembers",
    "sscan",
    "sunion",
    "sinter",
    "sdiff",
    "hkeys",
    "hvals",
    "hgetall",
    "hscan",
    "scan",
    // `XADD key * …` takes its entry ID from each server's clock.
    "xadd",
];

/// Bounded: an application has a handful of scripts; a flood of distinct ones (scripts built
/// by string interpolation) must not grow memory without limit.
const MAX_SCRIPTS: usize = 1024;

#[derive(Default)]
pub struct ScriptCache {
    bodies: ForkSafeMutex<HashMap<String, Vec<u8>>>,
}

impl ScriptCache {
    /// Remembers the body of an EVAL or SCRIPT LOAD passing through.
    pub fn observe(&self, cmd: &Command) {
        let body = if cmd.name_is("eval") {
            cmd.arg(1)
        } else if cmd.name_is("script")
            && cmd.arg(1).is_some_and(|s| s.eq_ignore_ascii_case(b"load"))
        {
            cmd.arg(2)
        } else {
            None
        };
        let Some(body) = body else { return };
        let sha = sha1_smol::Sha1::from(body).digest().to_string();
        let mut bodies = self.bodies.lock();
        if bodies.len() < MAX_SCRIPTS || bodies.contains_key(&sha) {
            bodies.insert(sha, body.to_vec());
        }
    }

    /// Whether a script may have written something else on each store: an EVAL or EVALSHA
    /// whose body (for EVALSHA, as seen earlier) names a random, time or hash-order command
    /// (`'spop'`, `[[TIME]]`, `"smembers"`) or the KEYS command, or uses `math.random`; and any
    /// FCALL (a function's body is not looked into). A heuristic: a command name built at run
    /// time escapes it, and so does the body of an EVALSHA this process never saw.
    pub fn may_differ(&self, cmd: &Command) -> bool {
        if cmd.name_is("fcall") {
            return true;
        }
        if cmd.name_is("eval") {
            return cmd.arg(1).is_some_and(calls_something_random);
        }
        if !cmd.name_is("evalsha") {
            return false;
        }
        let Some(sha) = cmd.arg(1) else { return false };
        let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
        self.bodies
            .lock()
            .get(&sha)
            .is_some_and(|body| calls_something_random(body))
    }

    /// For an EVALSHA the other store answered NOSCRIPT: the commands that load the script
    /// there and run it again, when the script is known.
    pub fn recovery(&self, evalsha: &Command) -> Option<Vec<Command>> {
        if !evalsha.name_is("evalsha") {
            return None;
        }
        let sha = String::from_utf8_lossy(evalsha.arg(1)?).to_ascii_lowercase();
        let body = self.bodies.lock().get(&sha)?.clone();
        let load = Command::from_args([&b"script"[..], b"load", &body]);
        Some(vec![load, evalsha.clone()])
    }
}

fn calls_something_random(body: &[u8]) -> bool {
    let body = body.to_ascii_lowercase();
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    // As a whole word: `'time'`, `[[time]]`, `"TIME"` — not `pexpiretime` (a word anywhere else,
    // a comment's "time", costs a re-sync, no more).
    let names = |name: &[u8]| {
        body.windows(name.len()).enumerate().any(|(at, w)| {
            w == name
                && (at == 0 || !word(body[at - 1]))
                && body.get(at + name.len()).is_none_or(|&c| !word(c))
        })
    };
    // KEYS as a command only where a string names it: KEYS[1] is in every script.
    let keys_command = [&b"'keys'"[..], b"\"keys\"", b"[[keys]]"]
        .iter()
        .any(|quoted| contains(quoted));
    contains(b"math.random") || keys_command || NONDETERMINISTIC.iter().any(|n| names(n.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_scripts_that_may_write_something_else_on_each_store() {
        let cache = ScriptCache::default();
        let eval = |body: &str| Command::from_args(["EVAL", body, "1", "k"]);
        assert!(cache.may_differ(&eval("return redis.call('SPOP', KEYS[1])")));
        assert!(cache.may_differ(&eval("local t = redis.call(\"time\") return t[1]")));
        assert!(cache.may_differ(&eval("return math.random(10)")));
        assert!(cache.may_differ(&eval("return redis.call([[TIME]])[1]")));
        assert!(cache.may_differ(&eval("return redis.call('smembers', KEYS[1])[1]")));
        assert!(cache.may_differ(&eval("return #redis.call('keys', '*')")));
        assert!(cache.may_differ(&Command::from_args(["FCALL", "f", "1", "k"])));
        assert!(!cache.may_differ(&Command::from_args(["FCALL_RO", "f", "1", "k"])));
        assert!(!cache.may_differ(&eval("return redis.call('incr', KEYS[1])")));
        // "time" inside another name is not the TIME command.
        assert!(!cache.may_differ(&eval("return redis.call('pexpiretime', KEYS[1])")));
        let body = "return redis.call('srandmember', KEYS[1])";
        cache.observe(&eval(body));
        let sha = sha1_smol::Sha1::from(body).digest().to_string();
        assert!(cache.may_differ(&Command::from_args([
            "EVALSHA",
            &sha.to_uppercase(),
            "1",
            "k"
        ])));
        assert!(!cache.may_differ(&Command::from_args(["EVALSHA", "00", "1", "k"])));
    }

    #[test]
    fn recovers_an_evalsha_whose_script_went_through_eval() {
        let cache = ScriptCache::default();
        cache.observe(&Command::from_args(["EVAL", "return 1", "0"]));
        // sha1("return 1")
        let evalsha =
            Command::from_args(["evalsha", "E0E1F9FABFC9D4800C877A703B823AC0578FF8DB", "0"]);
        let recovery = cache.recovery(&evalsha).expect("known script");
        assert_eq!(
            recovery[0],
            Command::from_args(["script", "load", "return 1"])
        );
        assert_eq!(recovery[1], evalsha);
        assert!(cache
            .recovery(&Command::from_args(["evalsha", "0000", "0"]))
            .is_none());
    }
}
