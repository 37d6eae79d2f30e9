//! Ruby values to command arguments, and replies to the Ruby objects redis-rb 4.8's Ruby
//! driver returns.
//!
//! Arguments follow redis-rb's `build_command`: one level of arrays is flattened and every
//! element is sent as its `to_s`, byte for byte. Replies follow its `format_reply`: bulk
//! strings in `Encoding.default_external`, status lines as binary strings, error replies as
//! `Redis::CommandError` objects (raised by the caller at the top level, kept in place inside
//! pipelines and transactions).

use crate::error::command_error_class;
use gitlab_multistore::protocol::reply::error_message;
use gitlab_multistore::{Command, Reply};
use magnus::rb_sys::FromRawValue;
use magnus::{
    prelude::*, Error, Exception, Fixnum, IntoValue, RArray, RString, Ruby, Symbol, Value as RValue,
};
use std::os::raw::c_long;

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

/// The encoding bulk strings are tagged with, looked up once per reply.
#[derive(Clone, Copy)]
enum BulkEncoding {
    /// The usual `default_external`, which Ruby sets on a new string for free.
    Utf8,
    Other(*mut rb_sys::rb_encoding),
}

fn convert(ruby: &Ruby, reply: Reply, bulk_encoding: BulkEncoding) -> Result<RValue, Error> {
    Ok(match reply {
        Reply::Nil => ruby.qnil().as_value(),
        Reply::Integer(n) => n.into_value_with(ruby),
        Reply::Bulk(bytes) => bulk_string(&bytes, bulk_encoding),
        Reply::Status(line) => ruby.str_from_slice(&line).as_value(),
        Reply::Error(line) => command_error(ruby, &line)?.as_value(),
        // Filled in batches from a buffer on the stack (where the GC sees the new strings),
        // not one protected push per element.
        Reply::Array(items) => ruby
            .ary_try_from_iter(
                items
                    .into_iter()
                    .map(|item| convert(ruby, item, bulk_encoding)),
            )?
            .as_value(),
    })
}

fn bulk_string(bytes: &[u8], encoding: BulkEncoding) -> RValue {
    // SAFETY: called with the GVL held (every conversion is); rb_enc_str_new copies the bytes
    // and cannot raise for a valid encoding, which `default_external` always is.
    unsafe {
        let (ptr, len) = (bytes.as_ptr().cast(), bytes.len() as c_long);
        RValue::from_raw(match encoding {
            BulkEncoding::Utf8 => rb_sys::rb_utf8_str_new(ptr, len),
            BulkEncoding::Other(encoding) => rb_sys::rb_enc_str_new(ptr, len, encoding),
        })
    }
}

/// The reply of a command redis-rb turns into a Hash with `Redis::Commands::Hashify` (HGETALL,
/// CONFIG GET …), built here as `each_slice(2).to_h` would build it: same keys (frozen copies,
/// as `Hash#[]=` makes them), same order, the last of duplicate keys winning. Anything else
/// (nil, an odd-length array) is returned as it is, for the caller to hand to Hashify.
pub fn reply_to_hash(ruby: &Ruby, reply: Reply) -> Result<RValue, Error> {
    let items = match reply {
        Reply::Array(items) if items.len() % 2 == 0 => items,
        other => return reply_to_ruby(ruby, other),
    };
    let encoding = default_external(ruby);
    let hash = ruby.hash_new();
    let mut items = items.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        hash.aset(
            convert(ruby, key, encoding)?,
            convert(ruby, value, encoding)?,
        )?;
    }
    Ok(hash.as_value())
}

/// A `Redis::CommandError` whose message is the stripped error line as a binary string,
/// exactly as redis-rb's Ruby driver builds it.
fn command_error(ruby: &Ruby, line: &[u8]) -> Result<Exception, Error> {
    let message = ruby.str_from_slice(error_message(line));
    command_error_class(ruby).new_instance((message,))
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
fn default_external(_ruby: &Ruby) -> BulkEncoding {
    // SAFETY: the GVL is held (the `Ruby` handle proves it).
    unsafe {
        let external = rb_sys::rb_default_external_encoding();
        if external == rb_sys::rb_utf8_encoding() {
            BulkEncoding::Utf8
        } else {
            BulkEncoding::Other(external)
        }
    }
}

/// A Hash with Symbol keys, for the reports the native objects return to Ruby.
pub fn symbol_hash(ruby: &Ruby, entries: &[(&str, RValue)]) -> Result<magnus::RHash, Error> {
    let hash = ruby.hash_new();
    for (key, value) in entries {
        hash.aset(ruby.to_symbol(key), *value)?;
    }
    Ok(hash)
}

/// A blocking command's own timeout in seconds, as the core takes it (zero: wait forever). One
/// too long for Ruby's `Time` raises `RangeError` as redis-rb's wait for the reply does (redis-rb
/// raises it once the command is sent; the server refuses such a timeout anyway).
pub fn blocking_timeout(ruby: &Ruby, seconds: f64) -> Result<std::time::Duration, Error> {
    use gitlab_multistore::seconds::Wait;
    match Wait::from_seconds(seconds) {
        Wait::For(duration) => Ok(duration),
        Wait::Forever => Ok(std::time::Duration::ZERO),
        Wait::OutOfRange => Err(Error::new(
            ruby.exception_range_error(),
            Wait::out_of_range_message(seconds),
        )),
    }
}
