//! Core errors as the exceptions redis-rb raises: same classes, same messages, so rescue
//! clauses written for redis-rb keep working.

use gitlab_multistore::Error as CoreError;
use magnus::value::{InnerValue, Opaque};
use magnus::{prelude::*, Error, ExceptionClass, RClass, Ruby};
use std::any::Any;
use std::sync::OnceLock;

struct RedisErrorClasses {
    command: Opaque<ExceptionClass>,
    cannot_connect: Opaque<ExceptionClass>,
    connection: Opaque<ExceptionClass>,
    timeout: Opaque<ExceptionClass>,
    method_missing: Opaque<ExceptionClass>,
    not_namespaced: Opaque<ExceptionClass>,
    cross_slot: Opaque<ExceptionClass>,
    protocol: Opaque<ExceptionClass>,
    backfill_after_switch: Opaque<ExceptionClass>,
}

static CLASSES: OnceLock<RedisErrorClasses> = OnceLock::new();

/// Looks the exception classes up once, at load time (lib/ requires redis-rb and defines the
/// MultiStore's errors before loading the extension).
pub fn init(ruby: &Ruby) -> Result<(), Error> {
    let redis: RClass = ruby.class_object().const_get("Redis")?;
    // Registered with the GC: it then keeps them alive and never moves them, which
    // `GC.compact` would otherwise do under these stored references.
    let keep = |class: ExceptionClass| -> Opaque<ExceptionClass> {
        ruby.gc_register_mark_object(class);
        Opaque::from(class)
    };
    let classes = RedisErrorClasses {
        command: keep(redis.const_get("CommandError")?),
        cannot_connect: keep(redis.const_get("CannotConnectError")?),
        connection: keep(redis.const_get("ConnectionError")?),
        timeout: keep(redis.const_get("TimeoutError")?),
        method_missing: keep(
            ruby.eval::<ExceptionClass>("Gitlab::Redis::MultiStore::MethodMissingError")?,
        ),
        not_namespaced: keep(
            ruby.eval::<ExceptionClass>("Gitlab::Redis::MultiStore::NamespaceError")?,
        ),
        cross_slot: keep(ruby.eval::<ExceptionClass>("Redis::Cluster::CrossSlotPipeliningError")?),
        protocol: keep(redis.const_get("ProtocolError")?),
        backfill_after_switch: keep(
            ruby.eval::<ExceptionClass>("Gitlab::Redis::MultiStore::BackfillAfterSwitchError")?,
        ),
    };
    let _ = CLASSES.set(classes);
    Ok(())
}

fn classes(ruby: &Ruby) -> Result<&'static RedisErrorClasses, Error> {
    CLASSES.get().ok_or_else(|| {
        Error::new(
            ruby.exception_runtime_error(),
            "gitlab_multistore: native extension used before it was initialised",
        )
    })
}

pub fn command_error_class(ruby: &Ruby) -> Result<ExceptionClass, Error> {
    Ok(classes(ruby)?.command.get_inner_with(ruby))
}

/// The Ruby class a core error is raised as, by name (for reports built on the Ruby side).
pub fn ruby_error_class_name(err: &CoreError) -> &'static str {
    match err {
        CoreError::Server(_) => "Redis::CommandError",
        CoreError::CannotConnect { .. } => "Redis::CannotConnectError",
        CoreError::Timeout | CoreError::RequestsInDoubt { .. } => "Redis::TimeoutError",
        CoreError::ConnectionLost { .. } | CoreError::Interrupted | CoreError::Protocol(_) => {
            "Redis::ConnectionError"
        }
        CoreError::MethodMissing(_) => "Gitlab::Redis::MultiStore::MethodMissingError",
        CoreError::NotNamespaced(_) => "Gitlab::Redis::MultiStore::NamespaceError",
        CoreError::InvalidConfig(_) => "ArgumentError",
        CoreError::CrossSlot { .. } => "Redis::Cluster::CrossSlotPipeliningError",
        CoreError::UnexpectedReplyType(_) => "Redis::ProtocolError",
        CoreError::SoleStore(_) => "Gitlab::Redis::MultiStore::BackfillAfterSwitchError",
    }
}

pub fn to_ruby_error(ruby: &Ruby, err: CoreError) -> Error {
    let classes = match classes(ruby) {
        Ok(classes) => classes,
        Err(not_ready) => return not_ready,
    };
    let class = match &err {
        CoreError::Server(_) => classes.command,
        CoreError::CannotConnect { .. } => classes.cannot_connect,
        CoreError::Timeout | CoreError::RequestsInDoubt { .. } => classes.timeout,
        CoreError::ConnectionLost { .. } | CoreError::Interrupted | CoreError::Protocol(_) => {
            classes.connection
        }
        CoreError::MethodMissing(_) => classes.method_missing,
        CoreError::NotNamespaced(_) => classes.not_namespaced,
        CoreError::CrossSlot { .. } => classes.cross_slot,
        CoreError::UnexpectedReplyType(_) => classes.protocol,
        CoreError::SoleStore(_) => classes.backfill_after_switch,
        CoreError::InvalidConfig(_) => {
            return Error::new(ruby.exception_arg_error(), err.to_string())
        }
    };
    match &err {
        // Error lines are bytes: raised as a binary string, as redis-rb does.
        CoreError::Server(reply) => {
            let message = ruby.str_from_slice(&reply.message);
            match class.get_inner_with(ruby).new_instance((message,)) {
                Ok(exception) => Error::from(exception),
                Err(e) => e,
            }
        }
        // redis-rb builds its message from the byte.
        CoreError::UnexpectedReplyType(byte) => {
            let byte = ruby.str_new(&(*byte as char).to_string());
            match class.get_inner_with(ruby).new_instance((byte,)) {
                Ok(exception) => Error::from(exception),
                Err(e) => e,
            }
        }
        // redis-rb builds its message from the keys.
        CoreError::CrossSlot { keys } => {
            let keys = ruby.ary_from_iter(keys.iter().map(|k| ruby.str_from_slice(k)));
            match class.get_inner_with(ruby).new_instance((keys,)) {
                Ok(exception) => Error::from(exception),
                Err(e) => e,
            }
        }
        _ => Error::new(class.get_inner_with(ruby), err.to_string()),
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
