//! Stream entry IDs under dual-write.
//!
//! `XADD key * …` lets each server pick the entry's ID from its own clock and its own last
//! entry, so the same write sent to both stores may be stored under two different IDs, and a
//! consumer that remembers IDs would find other ones after the switch. The other store is
//! therefore given the ID the default store chose: the two writes then run one after the
//! other rather than at once, for XADD and the batches (pipelines, transactions) holding one.

use crate::protocol::command::Command;

/// Where a XADD's ID argument is when the server is asked to choose it (`*`, or `<ms>-*`),
/// after NOMKSTREAM and a MAXLEN/MINID trim with its `=`/`~` and LIMIT.
pub fn auto_id_position(cmd: &Command) -> Option<usize> {
    if !cmd.name_is("xadd") {
        return None;
    }
    let is = |at: usize, word: &str| {
        cmd.arg(at)
            .is_some_and(|a| a.eq_ignore_ascii_case(word.as_bytes()))
    };
    let mut at = 2;
    loop {
        if is(at, "nomkstream") {
            at += 1;
        } else if is(at, "maxlen") || is(at, "minid") {
            at += 1;
            if is(at, "=") || is(at, "~") {
                at += 1;
            }
            at += 1;
            if is(at, "limit") {
                at += 2;
            }
        } else {
            break;
        }
    }
    let id = cmd.arg(at)?;
    (id == b"*" || id.ends_with(b"-*")).then_some(at)
}

/// Whether a batch holds an XADD that lets the server choose the ID.
pub fn has_auto_id(cmds: &[Command]) -> bool {
    cmds.iter().any(|cmd| auto_id_position(cmd).is_some())
}

/// A batch as the other store should run it once the default store ran it: each XADD that let
/// the server choose gets the ID the default store's reply holds (in a MULTI … EXEC batch,
/// EXEC's reply holds them). `None` when the batch has no such XADD.
pub fn mirror_batch(
    cmds: &[Command],
    replies: &[crate::protocol::reply::Reply],
) -> Option<Vec<Command>> {
    use crate::protocol::reply::Reply;
    if !has_auto_id(cmds) {
        return None;
    }
    let transaction = cmds.first().is_some_and(|c| c.name_is("multi"))
        && cmds.last().is_some_and(|c| c.name_is("exec"));
    let executed = match (transaction, replies.last()) {
        (true, Some(Reply::Array(results))) => Some(results.as_slice()),
        _ => None,
    };
    let reply_of = |i: usize| match executed {
        Some(results) => i.checked_sub(1).and_then(|queued| results.get(queued)),
        None if transaction => None,
        None => replies.get(i),
    };
    Some(
        cmds.iter()
            .enumerate()
            .map(|(i, cmd)| match (auto_id_position(cmd), reply_of(i)) {
                (Some(at), Some(Reply::Bulk(id))) => with_id(cmd, at, id),
                _ => cmd.clone(),
            })
            .collect(),
    )
}

/// The same command with the ID at `at` replaced by the one the default store returned.
pub fn with_id(cmd: &Command, at: usize, id: &[u8]) -> Command {
    let mut mirrored = Command::with_capacity(cmd.len(), 64);
    for (i, arg) in cmd.args().enumerate() {
        mirrored.push(if i == at { id } else { arg });
    }
    mirrored
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(args: &[&str]) -> Option<usize> {
        auto_id_position(&Command::from_args(args))
    }

    #[test]
    fn finds_the_id_the_server_would_choose_after_any_options() {
        assert_eq!(position(&["XADD", "s", "*", "f", "v"]), Some(2));
        assert_eq!(
            position(&["xadd", "s", "1700000000000-*", "f", "v"]),
            Some(2)
        );
        assert_eq!(
            position(&["xadd", "s", "NOMKSTREAM", "*", "f", "v"]),
            Some(3)
        );
        assert_eq!(
            position(&["xadd", "s", "MAXLEN", "~", "1000", "*", "f", "v"]),
            Some(5)
        );
        assert_eq!(
            position(&["xadd", "s", "maxlen", "10", "*", "f", "v"]),
            Some(4)
        );
        assert_eq!(
            position(&[
                "xadd",
                "s",
                "nomkstream",
                "minid",
                "=",
                "5-0",
                "limit",
                "10",
                "*",
                "f",
                "v"
            ]),
            Some(8)
        );
    }

    #[test]
    fn leaves_explicit_ids_and_other_commands_alone() {
        assert_eq!(position(&["xadd", "s", "5-1", "f", "v"]), None);
        assert_eq!(position(&["set", "*", "v"]), None);
        assert_eq!(position(&["xadd", "s"]), None);
    }

    #[test]
    fn a_batch_takes_the_ids_from_its_replies_or_from_exec() {
        use crate::protocol::reply::Reply;
        let id = |s: &str| Reply::Bulk(s.as_bytes().to_vec());
        let xadd = Command::from_args(["xadd", "s", "*", "f", "v"]);
        let set = Command::from_args(["set", "k", "v"]);

        let pipelined = mirror_batch(
            &[set.clone(), xadd.clone()],
            &[Reply::Status(b"OK".to_vec()), id("7-1")],
        );
        assert_eq!(
            pipelined,
            Some(vec![
                set.clone(),
                Command::from_args(["xadd", "s", "7-1", "f", "v"])
            ])
        );

        let multi = Command::from_args(["multi"]);
        let exec = Command::from_args(["exec"]);
        let queued = Reply::Status(b"QUEUED".to_vec());
        let transaction = mirror_batch(
            &[multi.clone(), xadd.clone(), exec.clone()],
            &[
                Reply::Status(b"OK".to_vec()),
                queued,
                Reply::Array(vec![id("8-0")]),
            ],
        );
        assert_eq!(
            transaction,
            Some(vec![
                multi,
                Command::from_args(["xadd", "s", "8-0", "f", "v"]),
                exec
            ])
        );
        assert_eq!(mirror_batch(&[set], &[Reply::Nil]), None);
    }

    #[test]
    fn copies_the_command_with_the_chosen_id() {
        let cmd = Command::from_args(["xadd", "s", "maxlen", "10", "*", "f", "v"]);
        let mirrored = with_id(&cmd, 4, b"1700000000000-3");
        let args: Vec<&[u8]> = mirrored.args().collect();
        assert_eq!(
            args,
            [
                &b"xadd"[..],
                b"s",
                b"maxlen",
                b"10",
                b"1700000000000-3",
                b"f",
                b"v"
            ]
        );
    }
}
