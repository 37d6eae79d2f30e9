//! Errors of the core, shaped after the exceptions redis-rb 4.8 raises so the binding can map
//! each one to the same class and message a redis-rb user already rescues.

use std::fmt;
use std::io;

/// An error reply from the server (`-WRONGTYPE Operation against ...`), kept as the full line
/// so it reads exactly as redis-rb's `Redis::CommandError#message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerErrorReply {
    /// Stripped as redis-rb strips it; bytes, since Redis does not promise UTF-8 here.
    pub message: Vec<u8>,
}

impl ServerErrorReply {
    pub fn from_line(line: &[u8]) -> Self {
        ServerErrorReply {
            message: crate::protocol::reply::error_message(line).to_vec(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The connection could not be established.
    #[error("Error connecting to Redis on {location} ({cause})")]
    CannotConnect { location: String, cause: Cause },

    /// An established connection broke.
    #[error("Connection lost ({cause})")]
    ConnectionLost { cause: Cause },

    #[error("Connection timed out")]
    Timeout,

    /// Commands that timed out earlier may still run on the store: a re-sync, verify or
    /// backfill waits for them before looking at keys, and gave up waiting.
    #[error("Connection timed out: {store} has not finished commands that timed out earlier (waited {waited_ms} ms)")]
    RequestsInDoubt { store: String, waited_ms: u64 },

    /// The caller's Ruby thread was interrupted (Thread#kill, Timeout, a signal) while waiting;
    /// the connection it was using has been shut down and discarded.
    #[error("Connection lost (interrupted)")]
    Interrupted,

    /// The server said something that is not RESP.
    #[error("Protocol error: {0}")]
    Protocol(String),

    /// A reply began with a byte no reply begins with (redis-rb's `Redis::ProtocolError`, whose
    /// message names the byte).
    #[error("Got '{}' as initial reply byte", *.0 as char)]
    UnexpectedReplyType(u8),

    /// An error reply to a command the caller sent.
    #[error("{0}")]
    Server(ServerErrorReply),

    /// A command a store inside a key namespace cannot run there: it acts on the whole
    /// database, or names keys the command table cannot place (see `namespace.rs`).
    #[error("{0} cannot run inside a key namespace: it would reach keys of other namespaces")]
    NotNamespaced(String),

    /// A command not in the command table, refused in strict mode.
    #[error("Method missing {0}. Add it to the command table or route it explicitly.")]
    MethodMissing(String),

    /// A pipelined transaction whose keys live on several cluster nodes (redis-rb's
    /// `Redis::Cluster::CrossSlotPipeliningError`, which lists them).
    #[error("Cluster client couldn't send pipelining to single node. The commands include cross slot keys.")]
    CrossSlot { keys: Vec<Vec<u8>> },

    /// A store configuration the core cannot use.
    #[error("{0}")]
    InvalidConfig(String),

    /// A copy stopped because the flags made its target the only store written (the switch
    /// happened while it ran): copied now, it would bring back what was deleted there since.
    #[error("the {0} became the only store written while the copy ran: stopped, so that nothing deleted there since comes back")]
    SoleStore(&'static str),
}

impl Error {
    /// Errors after which redis-rb disconnects and, if allowed, reconnects and retries.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::CannotConnect { .. }
                | Error::ConnectionLost { .. }
                | Error::Timeout
                | Error::RequestsInDoubt { .. }
        )
    }

    /// Maps an I/O failure on an established connection the way redis-rb's `Client#io` does.
    pub(crate) fn from_io(err: &io::Error) -> Error {
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            io::ErrorKind::InvalidData => match err
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<crate::protocol::reply::UnexpectedType>())
            {
                Some(unexpected) => Error::UnexpectedReplyType(unexpected.0),
                None => Error::Protocol(err.to_string()),
            },
            _ => Error::ConnectionLost {
                cause: Cause::of(err),
            },
        }
    }

    pub(crate) fn cannot_connect(location: &str, err: &io::Error) -> Error {
        Error::CannotConnect {
            location: location.to_string(),
            cause: Cause::of(err),
        }
    }
}

/// Why a connection could not be made, or broke: what the binding needs to name it as the
/// client it stands in for does (redis-rb: `Errno::ECONNREFUSED`, `Redis::TimeoutError`…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// An operating system error (errno).
    Os(i32),
    /// The server closed the connection.
    Closed,
    /// No answer within the timeout.
    TimedOut,
    /// The TLS handshake failed (the TLS library's message).
    Tls(String),
    /// Another I/O failure, without an errno (a host name that does not resolve).
    Io(String),
    /// Not an I/O failure: what was wrong with the server (a sentinel's master of the wrong
    /// role, no sentinel answering).
    Refused(String),
}

impl Cause {
    pub(crate) fn of(err: &io::Error) -> Cause {
        match (err.kind(), err.raw_os_error()) {
            (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, _) => Cause::TimedOut,
            (io::ErrorKind::UnexpectedEof, _) => Cause::Closed,
            (_, Some(errno)) => Cause::Os(errno),
            _ => Cause::Io(err.to_string()),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Os(errno) => match errno_name(*errno) {
                Some(name) => f.write_str(name),
                None => write!(f, "errno {errno}"),
            },
            Cause::Closed => f.write_str("closed by the server"),
            Cause::TimedOut => f.write_str("timed out"),
            Cause::Tls(message) => write!(f, "TLS: {message}"),
            Cause::Io(message) | Cause::Refused(message) => f.write_str(message),
        }
    }
}

/// The name of an errno (`ECONNREFUSED`), as Ruby's `Errno::` classes are named; `None` for one
/// outside the table (those a socket, a path or a process limit can give).
pub fn errno_name(errno: i32) -> Option<&'static str> {
    const NAMES: &[(i32, &str)] = &[
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EINTR, "EINTR"),
        (libc::EIO, "EIO"),
        (libc::EBADF, "EBADF"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EACCES, "EACCES"),
        (libc::EFAULT, "EFAULT"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENFILE, "ENFILE"),
        (libc::EMFILE, "EMFILE"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EPIPE, "EPIPE"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ELOOP, "ELOOP"),
        (libc::ENOTSOCK, "ENOTSOCK"),
        (libc::EPROTOTYPE, "EPROTOTYPE"),
        (libc::ENOPROTOOPT, "ENOPROTOOPT"),
        (libc::EPROTONOSUPPORT, "EPROTONOSUPPORT"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::EAFNOSUPPORT, "EAFNOSUPPORT"),
        (libc::EADDRINUSE, "EADDRINUSE"),
        (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
        (libc::ENETDOWN, "ENETDOWN"),
        (libc::ENETUNREACH, "ENETUNREACH"),
        (libc::ENETRESET, "ENETRESET"),
        (libc::ECONNABORTED, "ECONNABORTED"),
        (libc::ECONNRESET, "ECONNRESET"),
        (libc::ENOBUFS, "ENOBUFS"),
        (libc::EISCONN, "EISCONN"),
        (libc::ENOTCONN, "ENOTCONN"),
        (libc::ESHUTDOWN, "ESHUTDOWN"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
        (libc::EHOSTDOWN, "EHOSTDOWN"),
        (libc::EHOSTUNREACH, "EHOSTUNREACH"),
        (libc::EALREADY, "EALREADY"),
        (libc::EINPROGRESS, "EINPROGRESS"),
    ];
    NAMES
        .iter()
        .find(|(code, _)| *code == errno)
        .map(|(_, name)| *name)
}

impl fmt::Display for ServerErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.message))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_errnos_a_socket_a_path_or_a_process_limit_gives() {
        assert_eq!(errno_name(libc::ECONNREFUSED), Some("ECONNREFUSED"));
        assert_eq!(errno_name(libc::EMFILE), Some("EMFILE"));
        assert_eq!(errno_name(libc::ENOTDIR), Some("ENOTDIR"));
        assert_eq!(errno_name(libc::EHOSTDOWN), Some("EHOSTDOWN"));
        assert_eq!(errno_name(-1), None);
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(Cause::of(&refused), Cause::Os(libc::ECONNREFUSED));
        assert_eq!(
            Cause::of(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            Cause::Closed
        );
    }
}
