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
    /// The connection could not be established. `cause` names the failure the way redis-rb
    /// does (`Errno::ECONNREFUSED`, `Redis::TimeoutError`, `SocketError`).
    #[error("Error connecting to Redis on {location} ({cause})")]
    CannotConnect { location: String, cause: String },

    /// An established connection broke (`Connection lost (ECONNRESET)`).
    #[error("Connection lost ({cause})")]
    ConnectionLost { cause: String },

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
            // redis-rb's Ruby driver turns a closed connection into ECONNRESET.
            io::ErrorKind::UnexpectedEof => Error::ConnectionLost {
                cause: "ECONNRESET".into(),
            },
            io::ErrorKind::InvalidData => match err
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<crate::protocol::reply::UnexpectedType>())
            {
                Some(unexpected) => Error::UnexpectedReplyType(unexpected.0),
                None => Error::Protocol(err.to_string()),
            },
            _ => Error::ConnectionLost {
                cause: errno_name(err).trim_start_matches("Errno::").to_string(),
            },
        }
    }

    pub(crate) fn cannot_connect(location: &str, err: &io::Error) -> Error {
        let cause = match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "Redis::TimeoutError".into(),
            _ => errno_name(err),
        };
        Error::CannotConnect {
            location: location.to_string(),
            cause,
        }
    }
}

/// Ruby's name for the errno behind an I/O error (`Errno::ECONNREFUSED`), which is what
/// redis-rb puts in its messages.
pub(crate) fn errno_name(err: &io::Error) -> String {
    let name = match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(libc::EPIPE) => "EPIPE",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EBADF) => "EBADF",
        Some(libc::ENOTCONN) => "ENOTCONN",
        Some(code) => return format!("Errno::E{code}"),
        None if err.kind() == io::ErrorKind::UnexpectedEof => return "EOFError".into(),
        None => return "SocketError".into(),
    };
    format!("Errno::{name}")
}

impl fmt::Display for ServerErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.message))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
