//! Commands with their command-table entries, looked up once where a call enters the
//! MultiStore and handed down to everything that asks what a command is (its kind, keys,
//! whether it blocks), instead of each asking the table again.

use crate::protocol::command::Command;
use crate::protocol::command_table::{self, CommandKind, CommandSpec};

/// One command and its table entry (`None`: a command the table does not know).
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub cmd: &'a Command,
    pub spec: Option<&'static CommandSpec>,
}

impl<'a> Call<'a> {
    /// Looks the command up in the table.
    pub fn new(cmd: &'a Command) -> Call<'a> {
        Call {
            cmd,
            spec: command_table::lookup(cmd),
        }
    }

    pub fn kind(&self) -> Option<CommandKind> {
        self.spec.map(CommandSpec::kind)
    }

    pub fn is_write(&self) -> bool {
        self.kind() == Some(CommandKind::Write)
    }

    pub fn is_blocking(&self) -> bool {
        self.spec.is_some_and(CommandSpec::is_blocking)
    }

    /// The keys it names, where the table can tell them.
    pub fn keys(&self) -> Option<Vec<&'a [u8]>> {
        command_table::keys(self.cmd, self.spec?)
    }
}

/// The table entries of `cmds`, in order: what a `Batch` of them borrows.
pub fn resolve(cmds: &[Command]) -> Vec<Option<&'static CommandSpec>> {
    cmds.iter().map(command_table::lookup).collect()
}

/// Commands (one, a pipeline, a transaction) and their table entries. Borrowed, so that the
/// commands go on to a store as the slice they are.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    cmds: &'a [Command],
    specs: &'a [Option<&'static CommandSpec>],
}

impl<'a> Batch<'a> {
    /// `specs` are `resolve(cmds)`; a shorter list leaves the commands past it unresolved.
    pub fn new(cmds: &'a [Command], specs: &'a [Option<&'static CommandSpec>]) -> Batch<'a> {
        Batch { cmds, specs }
    }

    /// One command whose entry the caller already looked up.
    pub fn one(call: &'a Call<'a>) -> Batch<'a> {
        Batch {
            cmds: std::slice::from_ref(call.cmd),
            specs: std::slice::from_ref(&call.spec),
        }
    }

    pub fn cmds(&self) -> &'a [Command] {
        self.cmds
    }

    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Call<'a>> + 'a {
        let specs = self.specs;
        self.cmds.iter().enumerate().map(move |(i, cmd)| Call {
            cmd,
            spec: specs.get(i).copied().flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_hands_each_command_its_own_entry() {
        let cmds = [
            Command::from_args(["set", "a", "1"]),
            Command::from_args(["get", "a"]),
            Command::from_args(["no-such-command"]),
            Command::from_args(["blpop", "l", "0"]),
        ];
        let specs = resolve(&cmds);
        let batch = Batch::new(&cmds, &specs);
        let kinds: Vec<_> = batch.iter().map(|call| call.kind()).collect();
        assert_eq!(
            kinds,
            [
                Some(CommandKind::Write),
                Some(CommandKind::Read),
                None,
                Some(CommandKind::Write)
            ]
        );
        assert_eq!(batch.iter().filter(Call::is_blocking).count(), 1);
        assert_eq!(
            batch.iter().next().and_then(|c| c.keys()),
            Some(vec![&b"a"[..]])
        );
        assert_eq!(batch.cmds().len(), 4);
    }

    #[test]
    fn one_call_is_a_batch_of_one() {
        let cmd = Command::from_args(["hset", "h", "f", "v"]);
        let call = Call::new(&cmd);
        let batch = Batch::one(&call);
        assert_eq!(batch.len(), 1);
        assert!(batch.iter().all(|c| c.is_write()));
    }
}
