mod support;

use gitlab_multistore::protocol::command_table::{self, flag};
use gitlab_multistore::Command;
use redis::Value;
use support::RedisServer;

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}

/// Checks one COMMAND entry against the table, then its subcommands.
fn check_entry(entry: &Value, checked: &mut usize) {
    let fields = items(entry);
    let name = text(&fields[0]);
    let mut args: Vec<&str> = name.split('|').collect();
    if args.len() == 1 {
        args.push("");
    }
    let spec = command_table::lookup(&Command::from_args(&args))
        .unwrap_or_else(|| panic!("{name} is missing from the command table"));
    assert_eq!(spec.name, name, "lookup of {name}");
    assert_eq!(i64::from(spec.arity), int(&fields[1]), "arity of {name}");
    let flags = items(&fields[2]).iter().fold(0, |bits, f| {
        bits | flag::from_name(&text(f)).unwrap_or_else(|| panic!("unknown flag on {name}"))
    });
    assert_eq!(spec.flags, flags, "flags of {name}");
    assert_eq!(
        i64::from(spec.first_key),
        int(&fields[3]),
        "first key of {name}"
    );
    *checked += 1;
    if let Some(subcommands) = fields.get(9) {
        for sub in items(subcommands) {
            check_entry(sub, checked);
        }
    }
}

#[test]
fn the_table_matches_a_live_servers_command_output() {
    let server = RedisServer::start();
    let live = server.query(&["COMMAND"]);
    let mut checked = 0;
    for entry in items(&live) {
        check_entry(entry, &mut checked);
    }
    let info = text(&server.query(&["INFO", "server"]));
    let version_matches = info.contains(&format!("redis_version:{}", command_table::REDIS_VERSION));
    assert_eq!(
        checked,
        command_table::commands().len() + command_table::subcommands().len(),
        "live server (version match: {version_matches}) and table differ in size"
    );
}
