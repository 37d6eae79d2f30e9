//! The one map from core errors to Ruby exceptions: the classes and messages redis-rb raises, so
//! rescue clauses written for redis-rb keep working, and the gem's own errors. Both a command's
//! error and an event's (handed to the application's `on_error`) are built here.

use gitlab_multistore::error::{errno_name, Cause};
use gitlab_multistore::Error as CoreError;
use magnus::value::Lazy;
use magnus::{prelude::*, Error, Exception, ExceptionClass, Ruby};
use std::any::Any;

/// Looked up once the gem's Ruby files defined them (`resolve_classes`). Should one be
/// missing, the error is still raised, as a StandardError.
fn class(ruby: &Ruby, path: &str) -> ExceptionClass {
    // From the top level: `eval` would resolve the name inside whatever the caller runs in.
    ruby.class_object()
        .funcall::<_, _, ExceptionClass>("const_get", (path,))
        .unwrap_or_else(|_| ruby.exception_standard_error())
}

static COMMAND: Lazy<ExceptionClass> = Lazy::new(|ruby| class(ruby, "Redis::CommandError"));
static CANNOT_CONNECT: Lazy<ExceptionClass> =
    Lazy::new(|ruby| class(ruby, "Redis::CannotConnectError"));
static CONNECTION: Lazy<ExceptionClass> = Lazy::new(|ruby| class(ruby, "Redis::ConnectionError"));
static TIMEOUT: Lazy<ExceptionClass> = Lazy::new(|ruby| class(ruby, "Redis::TimeoutError"));
static PROTOCOL: Lazy<ExceptionClass> = Lazy::new(|ruby| class(ruby, "Redis::ProtocolError"));
static CROSS_SLOT: Lazy<ExceptionClass> =
    Lazy::new(|ruby| class(ruby, "Redis::Cluster::CrossSlotPipeliningError"));
static METHOD_MISSING: Lazy<ExceptionClass> =
    Lazy::new(|ruby| class(ruby, "Gitlab::Redis::MultiStore::MethodMissingError"));
static NOT_NAMESPACED: Lazy<ExceptionClass> =
    Lazy::new(|ruby| class(ruby, "Gitlab::Redis::MultiStore::NamespaceError"));
static BACKFILL_AFTER_SWITCH: Lazy<ExceptionClass> =
    Lazy::new(|ruby| class(ruby, "Gitlab::Redis::MultiStore::BackfillAfterSwitchError"));

/// Resolves every class now, once the gem's Ruby files defined them (called at require time).
/// Left to the first error, a lookup runs `const_get` inside the lazy value's one-time
/// initialisation: should Ruby switch threads during it, a second thread wanting the same class
/// waits on that initialisation while holding the GVL the first needs -- the process hangs.
pub fn resolve_classes(ruby: &Ruby) {
    for class in [
        &COMMAND,
        &CANNOT_CONNECT,
        &CONNECTION,
        &TIMEOUT,
        &PROTOCOL,
        &CROSS_SLOT,
        &METHOD_MISSING,
        &NOT_NAMESPACED,
        &BACKFILL_AFTER_SWITCH,
    ] {
        ruby.get_inner(class);
    }
}

pub fn command_error_class(ruby: &Ruby) -> ExceptionClass {
    ruby.get_inner(&COMMAND)
}

fn exception_class(ruby: &Ruby, err: &CoreError) -> ExceptionClass {
    let class = match err {
        CoreError::Server(_) => &COMMAND,
        CoreError::CannotConnect { .. } => &CANNOT_CONNECT,
        CoreError::Timeout | CoreError::RequestsInDoubt { .. } => &TIMEOUT,
        CoreError::ConnectionLost { .. } | CoreError::Interrupted | CoreError::Protocol(_) => {
            &CONNECTION
        }
        CoreError::MethodMissing(_) => &METHOD_MISSING,
        CoreError::NotNamespaced(_) => &NOT_NAMESPACED,
        CoreError::CrossSlot { .. } => &CROSS_SLOT,
        CoreError::UnexpectedReplyType(_) => &PROTOCOL,
        CoreError::SoleStore(_) => &BACKFILL_AFTER_SWITCH,
        CoreError::InvalidConfig(_) => return ruby.exception_arg_error(),
    };
    ruby.get_inner(class)
}

/// A connection failure's cause as redis-rb names it: `Error connecting to Redis on … (`this`)`
/// while connecting, `Connection lost (`this`)` after.
fn redis_rb_cause(cause: &Cause, connecting: bool) -> String {
    match cause {
        Cause::Os(errno) => {
            let name = errno_name(*errno).map_or_else(|| format!("E{errno}"), str::to_string);
            if connecting {
                format!("Errno::{name}")
            } else {
                name
            }
        }
        // redis-rb's Ruby driver turns a connection closed under a command into ECONNRESET.
        Cause::Closed if connecting => "EOFError".into(),
        Cause::Closed => "ECONNRESET".into(),
        Cause::TimedOut => "Redis::TimeoutError".into(),
        Cause::Tls(message) => format!("OpenSSL::SSL::SSLError: {message}"),
        Cause::Io(_) => "SocketError".into(),
        Cause::Refused(message) => message.clone(),
    }
}

/// The exception redis-rb would raise for `err`.
pub fn exception(ruby: &Ruby, err: &CoreError) -> Result<Exception, Error> {
    let class = exception_class(ruby, err);
    match err {
        // Error lines are bytes: raised as a binary string, as redis-rb does.
        CoreError::Server(reply) => class.new_instance((ruby.str_from_slice(&reply.message),)),
        // redis-rb builds its message from the byte.
        CoreError::UnexpectedReplyType(byte) => {
            class.new_instance((ruby.str_new(&(*byte as char).to_string()),))
        }
        // redis-rb builds its message from the keys.
        CoreError::CrossSlot { keys } => {
            class.new_instance((ruby.ary_from_iter(keys.iter().map(|k| ruby.str_from_slice(k))),))
        }
        CoreError::CannotConnect { location, cause } => class.new_instance((format!(
            "Error connecting to Redis on {location} ({})",
            redis_rb_cause(cause, true)
        ),)),
        CoreError::ConnectionLost { cause } => class.new_instance((format!(
            "Connection lost ({})",
            redis_rb_cause(cause, false)
        ),)),
        _ => class.new_instance((err.to_string(),)),
    }
}

pub fn to_ruby_error(ruby: &Ruby, err: CoreError) -> Error {
    match exception(ruby, &err) {
        Ok(exception) => Error::from(exception),
        Err(failed) => failed,
    }
}

pub fn panic_error(ruby: &Ruby, panic: &(dyn Any + Send)) -> Error {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    Error::new(
        ruby.exception_runtime_error(),
        format!("gitlab_multistore: internal error in native code: {detail}"),
    )
}
