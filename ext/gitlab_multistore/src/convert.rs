//! Ruby values to command arguments, and replies to the Ruby objects redis-rb 4.8's Ruby
//! driver returns.
//!
//! Arguments follow redis-rb's `build_command`: one level of arrays is flattened and every
//! element is sent as its `to_s`, byte for byte. Replies follow its `format_reply`: bulk
//! strings in `Encoding.default_external`, status lines as binary strings, error replies as
//! `Redis::CommandError` objects (raised by the caller at the top level, kept in place inside
//! pipelines and transactions).

use crate::error::command_error_class;
use gitlab_multistore::{server_error_reply, Command, Value};
use magnus::encoding::Index as EncodingIndex;
use magnus::{
    prelude::*, Error, Fixnum, IntoValue, RArray, RString, Ruby, Symbol, Value as RValue,
};

pub fn command_from_ruby(args: RArray) -> Result<Command, Error> {
    let mut cmd = Command::with_capacity(args.len(), 16 * args.len());
    for i in 0..args.len() {
        let arg: RValue = args.entry(i as isize)?;
        match RArray::from_value(arg) {
            Some(nested) => {
                for j in 0..nested.len() {
                    push_arg(&mut cmd, nested.entry(j as isize)?)?;
                }
            }
            None => push_arg(&mut cmd, arg)?,
        }
    }
    Ok(cmd)
}

pub fn commands_from_ruby(commands: RArray) -> Result<Vec<Command>, Error> {
    let mut out = Vec::with_capacity(commands.len());
    for i in 0..commands.len() {
        out.push(command_from_ruby(commands.entry(i as isize)?)?);
    }
    Ok(out)
}

fn push_arg(cmd: &mut Command, arg: RValue) -> Result<(), Error> {
    if let Some(s) = RString::from_value(arg) {
        // SAFETY: the bytes are copied before any other Ruby code can run.
        cmd.push(unsafe { s.as_slice() });
    } else if let Some(sym) = Symbol::from_value(arg) {
        cmd.push(sym.name()?.as_bytes());
    } else if let Some(n) = Fixnum::from_value(arg) {
        let n = n.to_i64();
        cmd.push_with(|buf| buf.extend_from_slice(n.to_string().as_bytes()));
    } else {
        // Floats, nil, true, big integers and anything else: exactly what Ruby's to_s says.
        let s: RString = arg.funcall("to_s", ())?;
        cmd.push(unsafe { s.as_slice() });
    }
    Ok(())
}

/// Converts a reply. Error replies become `Redis::CommandError` objects; the caller decides
/// whether to raise them.
pub fn reply_to_ruby(ruby: &Ruby, value: Value) -> Result<RValue, Error> {
    convert(ruby, value, default_external(ruby))
}

fn convert(ruby: &Ruby, value: Value, bulk_encoding: EncodingIndex) -> Result<RValue, Error> {
    Ok(match value {
        Value::Nil => ruby.qnil().as_value(),
        Value::Int(n) => n.into_value_with(ruby),
        Value::BulkString(bytes) => ruby.enc_str_new(&bytes, bulk_encoding).as_value(),
        Value::SimpleString(s) => ruby.str_from_slice(s.as_bytes()).as_value(),
        Value::Okay => ruby.str_from_slice(b"OK").as_value(),
        Value::Array(items) | Value::Set(items) => array(ruby, items, bulk_encoding)?,
        Value::ServerError(err) => {
            let message = ruby.str_from_slice(server_error_reply(&err).message.as_bytes());
            command_error_class(ruby)?
                .new_instance((message,))?
                .as_value()
        }
        // The core speaks RESP2, where the shapes below never occur; they are mapped to their
        // RESP2 equivalents so a future protocol change cannot crash a caller.
        Value::Map(pairs) => {
            let flat = pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
            array(ruby, flat, bulk_encoding)?
        }
        Value::Double(f) => ruby.enc_str_new(f.to_string(), bulk_encoding).as_value(),
        Value::Boolean(b) => (b as i64).into_value_with(ruby),
        Value::VerbatimString { text, .. } => ruby.enc_str_new(text, bulk_encoding).as_value(),
        Value::Attribute { data, .. } => convert(ruby, *data, bulk_encoding)?,
        Value::Push { data, .. } => array(ruby, data, bulk_encoding)?,
        other => ruby.str_new(&format!("{other:?}")).as_value(),
    })
}

fn array(ruby: &Ruby, items: Vec<Value>, bulk_encoding: EncodingIndex) -> Result<RValue, Error> {
    let ary = ruby.ary_new_capa(items.len());
    for item in items {
        ary.push(convert(ruby, item, bulk_encoding)?)?;
    }
    Ok(ary.as_value())
}

/// The top-level reply of a single call: an error reply is raised, as redis-rb's
/// `Client#call` does.
pub fn reply_or_raise(ruby: &Ruby, value: Value) -> Result<RValue, Error> {
    if let Value::ServerError(err) = &value {
        return Err(Error::new(
            command_error_class(ruby)?,
            server_error_reply(err).message,
        ));
    }
    reply_to_ruby(ruby, value)
}

pub fn replies_to_ruby(ruby: &Ruby, replies: Vec<Value>) -> Result<RArray, Error> {
    let encoding = default_external(ruby);
    let ary = ruby.ary_new_capa(replies.len());
    for reply in replies {
        ary.push(convert(ruby, reply, encoding)?)?;
    }
    Ok(ary)
}

/// redis-rb tags bulk replies with `Encoding.default_external`, read at each reply since an
/// application may change it.
fn default_external(ruby: &Ruby) -> EncodingIndex {
    EncodingIndex::from(ruby.default_external_encoding())
}
