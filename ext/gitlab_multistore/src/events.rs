//! Delivers what happened on the side of a call (a failed write on the non-default store, a
//! read fallback, an unknown command) to the Ruby reporter, after the GVL is taken back. Each
//! event becomes `[kind, command_name, store, error_class, error_message]`; the Ruby side turns
//! it into an exception and calls the application's `on_error`.

use crate::error::ruby_error_class_name;
use gitlab_multistore::{Event, Outcome};
use magnus::{prelude::*, Error, RArray, Ruby, Value};

pub fn report<T>(ruby: &Ruby, reporter: Value, outcome: &Outcome<T>) -> Result<(), Error> {
    if outcome.events.is_empty() {
        return Ok(());
    }
    let events = ruby.ary_new_capa(outcome.events.len());
    for event in &outcome.events {
        events.push(event_to_ruby(ruby, event, &outcome.command_name)?)?;
    }
    let _: Value = reporter.funcall("call", (events,))?;
    Ok(())
}

fn event_to_ruby(ruby: &Ruby, event: &Event, command_name: &str) -> Result<RArray, Error> {
    let nil = ruby.qnil().as_value();
    let (kind, store, error) = match event {
        Event::NonDefaultFailed { role, error } => {
            ("non_default_failed", Some(role.name()), Some(error))
        }
        Event::ReadFromPrimaryFailed { error } => {
            ("read_from_primary_failed", Some("primary"), Some(error))
        }
        Event::ReadFallback => ("read_fallback", Some("secondary"), None),
        Event::MethodMissing => ("method_missing", None, None),
        Event::PipelinedDiff => ("pipelined_diff", None, None),
    };
    let row = ruby.ary_new_capa(5);
    row.push(ruby.to_symbol(kind))?;
    row.push(ruby.str_new(command_name))?;
    row.push(store.map_or(nil, |s| ruby.to_symbol(s).as_value()))?;
    row.push(error.map_or(nil, |e| ruby.str_new(ruby_error_class_name(e)).as_value()))?;
    row.push(error.map_or(nil, |e| ruby.str_new(&e.to_string()).as_value()))?;
    Ok(row)
}
