//! Delivers what happened on the side of a call (a failed write on the non-default store, a
//! read fallback, an unknown command) to the Ruby reporter, after the GVL is taken back. Each
//! event becomes `[kind, command_name, store, exception]` -- the exception of a failure built
//! by the one error map (`error::exception`), nil for the other kinds, which the Ruby side names
//! -- and the Ruby side calls the application's `on_error`.

use crate::error::exception;
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
    let row = ruby.ary_new_capa(4);
    row.push(ruby.to_symbol(kind))?;
    row.push(ruby.str_new(command_name))?;
    row.push(store.map_or(nil, |s| ruby.to_symbol(s).as_value()))?;
    match error {
        Some(error) => row.push(exception(ruby, error)?)?,
        None => row.push(nil)?,
    }
    Ok(row)
}
