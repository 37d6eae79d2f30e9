//! Ruby values to command arguments, and replies to the Ruby objects redis-rb 4.8's Ruby
//! driver returns.
//!
//! Arguments follow redis-rb's `build_command`: one level of arrays is flattened and every
//! element is sent as its `to_s`, byte for byte. Replies follow its `format_reply`: bulk
//! strings in `Encoding.default_external`, status lines as binary strings, error replies as
//! `Redis::CommandError` objects (raised by the caller at the top level, kept in place inside
//! pipelines and transactions).

use crate::error::command_error_class;
use gitlab_multistore::reply::error_message;
use gitlab_multistore::{Command, Reply};
use magnus::encoding::Index as EncodingIndex;
use magnus::{
    prelude::*, Error, Exception, Fixnum, IntoValue, RArray, RString, Ruby, Symbol, Value as RValue,
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
        let text: RValue = arg.funcall("to_s", ())?;
        match RString::from_value(text) {
            // SAFETY: the bytes are copied before any other Ruby code can run.
            Some(s) => cmd.push(unsafe { s.as_slice() }),
            None => {
                // redis-rb asks the to_s result for its encoding next: a to_s that returns no
                // String fails there with Ruby's own NoMethodError, and so it does here.
                let _: RValue = text.funcall("encoding", ())?;
                return Err(Error::new(
                    magnus::Ruby::get_with(arg).exception_type_error(),
                    "to_s returned something other than a String",
                ));
            }
        }
    }
    Ok(())
}

/// Converts a reply. Error replies become `Redis::CommandError` objects; the caller decides
/// whether to raise them.
pub fn reply_to_ruby(ruby: &Ruby, reply: Reply) -> Result<RValue, Error> {
    convert(ruby, reply, default_external(ruby))
}

fn convert(ruby: &Ruby, reply: Reply, bulk_encoding: EncodingIndex) -> Result<RValue, Error> {
    Ok(match reply {
        Reply::Nil => ruby.qnil().as_value(),
        Reply::Integer(n) => n.into_value_with(ruby),
        Reply::Bulk(bytes) => ruby.enc_str_new(&bytes, bulk_encoding).as_value(),
        Reply::Status(line) => ruby.str_from_slice(&line).as_value(),
        Reply::Error(line) => command_error(ruby, &line)?.as_value(),
        Reply::Array(items) => {
            let ary = ruby.ary_new_capa(items.len());
            for item in items {
                ary.push(convert(ruby, item, bulk_encoding)?)?;
            }
            ary.as_value()
        }
    })
}

/// A `Redis::CommandError` whose message is the stripped error line as a binary string,
/// exactly as redis-rb's Ruby driver builds it.
fn command_error(ruby: &Ruby, line: &[u8]) -> Result<Exception, Error> {
    let message = ruby.str_from_slice(error_message(line));
    command_error_class(ruby)?.new_instance((message,))
}

/// The top-level reply of a single call: an error reply is raised, as redis-rb's
/// `Client#call` does.
pub fn reply_or_raise(ruby: &Ruby, reply: Reply) -> Result<RValue, Error> {
    if let Reply::Error(line) = &reply {
        return Err(Error::from(command_error(ruby, line)?));
    }
    reply_to_ruby(ruby, reply)
}

pub fn replies_to_ruby(ruby: &Ruby, replies: Vec<Reply>) -> Result<RArray, Error> {
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

/// A Hash with Symbol keys, for the reports the native objects return to Ruby.
pub fn symbol_hash(ruby: &Ruby, entries: &[(&str, RValue)]) -> Result<magnus::RHash, Error> {
    let hash = ruby.hash_new();
    for (key, value) in entries {
        hash.aset(ruby.to_symbol(key), *value)?;
    }
    Ok(hash)
}
