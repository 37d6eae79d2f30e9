//! One socket to one Redis server, speaking RESP2: commands are packed here, replies parsed by
//! `reply.rs`. The core owns the socket itself (rather than the `redis` crate's `Connection`)
//! because an interrupt has to shut the socket down from another thread,
//! and a blocking command has to change the read timeout for one call.

use crate::error::{Cause, Error, Result, ServerErrorReply};
use crate::protocol::command::Command;
use crate::protocol::namespace::{Namespace, ReplyKeys};
pub use crate::protocol::reply::Reply;
use crate::protocol::reply::ReplyReader;
use crate::transport::cancel::CancelToken;
use crate::transport::config::{Address, StoreConfig};
use crate::transport::in_doubt::InDoubt;
use crate::transport::poll::Ready;
use crate::transport::spin_wait::SpinWait;
use crate::transport::tls::TlsStream;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// See `Connection::still_open`.
const STILL_OPEN_CHECK_AFTER: Duration = Duration::from_millis(1);

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tls(s) => s.sock.set_read_timeout(timeout),
        }
    }

    /// Bytes already received and decrypted that the reply reader has not seen yet (TLS keeps
    /// its own buffer, which a look at the socket cannot see).
    fn has_decrypted_input(&mut self) -> bool {
        match self {
            Stream::Tls(s) => s
                .conn
                .process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() > 0),
            _ => false,
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(timeout),
            Stream::Unix(s) => s.set_write_timeout(timeout),
            Stream::Tls(s) => s.sock.set_write_timeout(timeout),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.sock.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => crate::transport::tls::read(s, buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

pub struct Connection {
    stream: Stream,
    reader: ReplyReader,
    write_buf: Vec<u8>,
    read_timeout: Option<Duration>,
    spin: SpinWait,
    /// A blocking command is waiting: its reply may take seconds, not worth spinning for.
    awaiting_blocking_reply: bool,
    /// Whether any byte of the last batch left for the server: from then on the server may have
    /// run it (all of it, even with no reply read: it may run a batch and then close the
    /// connection, as when the replies overflow its client output buffer limit).
    sent: bool,
    /// Which pool epoch opened it: a `select` or `disconnect` starts a new epoch and older
    /// connections are closed instead of being reused.
    pub(crate) epoch: u64,
    /// The server's run_id when this connection was opened.
    pub(crate) run_id: Option<String>,
    /// When it went back to the pool.
    idle_since: Instant,
    /// Left in a state the pool's other users must not inherit (another database after a
    /// SELECT): closed instead of going back to the pool.
    pub(crate) retired: bool,
    /// Commands sent whose replies were not read yet.
    unanswered: usize,
    /// Where the socket goes when dropped with commands unanswered (see `in_doubt.rs`).
    in_doubt: Option<Arc<InDoubt>>,
    fork_generation: u64,
    /// The store's key namespace, and how to read the replies still to come (one per command
    /// sent, in order; a subscription's further messages are read as pub/sub replies).
    namespace: Option<Namespace>,
    reply_keys: VecDeque<ReplyKeys>,
    subscribed: bool,
    /// Inside MULTI: how to read each queued command's reply in EXEC's array.
    queued_keys: Option<Vec<ReplyKeys>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.unanswered > 0 {
            if let Some(in_doubt) = &self.in_doubt {
                in_doubt.adopt(self.stream.as_raw_fd(), self.fork_generation);
            }
        }
    }
}

impl Connection {
    /// The process generation that opened the socket (see `fork::generation`).
    pub fn fork_generation(&self) -> u64 {
        self.fork_generation
    }

    /// Connects and runs the handshake redis-rb runs: AUTH, SELECT, CLIENT SETNAME.
    pub fn open(config: &StoreConfig, cancel: &CancelToken, epoch: u64) -> Result<Connection> {
        let location = config.address.location();
        let failed_to_connect = |e: io::Error| {
            if cancel.is_cancelled() || e.kind() == io::ErrorKind::Interrupted {
                Error::Interrupted
            } else {
                Error::cannot_connect(&location, &e)
            }
        };
        let stream = match &config.address {
            Address::Tcp { host, port } => {
                let stream = connect_tcp(host, *port, config.connect_timeout, cancel)
                    .map_err(failed_to_connect)?;
                stream.set_nodelay(true).map_err(failed_to_connect)?;
                if config.ssl {
                    // The handshake is part of connecting: bounded by the connect timeout, as
                    // redis-rb bounds its SSL connect, and interruptible.
                    stream
                        .set_read_timeout(config.connect_timeout)
                        .and_then(|_| stream.set_write_timeout(config.connect_timeout))
                        .map_err(failed_to_connect)?;
                    let _watch = cancel.watch(stream.as_raw_fd()).ok_or(Error::Interrupted)?;
                    let stop = || cancel.stop_after_signal();
                    let tls = crate::transport::tls::connect(stream, host, &config.tls, &stop)
                        .map_err(|e| {
                            match e.kind() {
                                // A hung server: a timeout while connecting, as redis-rb names it.
                                io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted => failed_to_connect(e),
                                // redis-rb lets OpenSSL's error through; here it is a failure to
                                // connect that names it, so `rescue Redis::BaseConnectionError`
                                // covers it.
                                _ => Error::CannotConnect {
                                    location: location.clone(),
                                    cause: Cause::Tls(e.to_string()),
                                },
                            }
                        })?;
                    Stream::Tls(Box::new(tls))
                } else {
                    Stream::Tcp(stream)
                }
            }
            Address::Unix { path } => {
                Stream::Unix(UnixStream::connect(path).map_err(failed_to_connect)?)
            }
        };
        stream
            .set_read_timeout(config.read_timeout)
            .and_then(|_| stream.set_write_timeout(config.write_timeout))
            .map_err(failed_to_connect)?;

        let mut conn = Connection {
            stream,
            reader: ReplyReader::new(),
            write_buf: Vec::with_capacity(256),
            read_timeout: config.read_timeout,
            // TLS keeps decrypted bytes of its own, which a peek at the socket cannot see.
            spin: SpinWait::new(if config.ssl {
                Duration::ZERO
            } else {
                config.spin_wait
            }),
            awaiting_blocking_reply: false,
            sent: false,
            epoch,
            run_id: None,
            idle_since: Instant::now(),
            retired: false,
            unanswered: 0,
            in_doubt: None,
            fork_generation: crate::fork::generation(),
            namespace: None,
            reply_keys: VecDeque::new(),
            subscribed: false,
            queued_keys: None,
        };
        // As redis-rb: a timeout during AUTH/SELECT is a TimeoutError, not a failure to connect.
        conn.run_id = conn.handshake(config, cancel)?;
        conn.namespace = config.namespace.clone();
        Ok(conn)
    }

    /// AUTH, SELECT and CLIENT SETNAME as configured, then INFO server for the server's run_id
    /// (a changed run_id means the server restarted, possibly empty): one round trip.
    fn handshake(&mut self, config: &StoreConfig, cancel: &CancelToken) -> Result<Option<String>> {
        let mut setup = Vec::new();
        if let Some(password) = &config.password {
            let mut auth = Command::from_args(["auth"]);
            if let Some(username) = &config.username {
                auth.push(username.as_bytes());
            }
            auth.push(password.as_bytes());
            setup.push(auth);
        }
        if config.db != 0 {
            setup.push(Command::from_args([
                "select".to_string(),
                config.db.to_string(),
            ]));
        }
        if let Some(name) = &config.client_name {
            setup.push(Command::from_args(["client", "setname", name.as_str()]));
        }
        setup.push(Command::from_args(["info", "server"]));
        let mut replies = self.pipeline(&setup, cancel)?;
        let info = replies.pop();
        for reply in replies {
            if let Reply::Error(line) = reply {
                return Err(Error::Server(ServerErrorReply::from_line(&line)));
            }
        }
        match info {
            // A server at maxclients writes this on accept and hangs up: redis-rb's first command
            // reads it and raises it. Any other error to INFO (an ACL, a proxy) is no reason to
            // refuse the connection: the run_id is only unknown.
            Some(Reply::Error(line)) if line.starts_with(b"ERR max number of clients") => {
                Err(Error::Server(ServerErrorReply::from_line(&line)))
            }
            info => Ok(info.as_ref().and_then(Reply::as_bytes).and_then(run_id)),
        }
    }

    /// Sends one command and reads its reply.
    pub fn request(&mut self, cmd: &Command, cancel: &CancelToken) -> Result<Reply> {
        self.send(cmd, cancel)?;
        self.receive(cancel)
    }

    /// Sends a command without waiting for its reply.
    pub fn send(&mut self, cmd: &Command, cancel: &CancelToken) -> Result<()> {
        self.send_batch(std::slice::from_ref(cmd), cancel)
    }

    /// Sends a batch without waiting for the replies; `receive` reads them.
    pub fn send_batch(&mut self, cmds: &[Command], cancel: &CancelToken) -> Result<()> {
        let _watch = cancel
            .watch(self.stream.as_raw_fd())
            .ok_or(Error::Interrupted)?;
        self.write_buf.clear();
        match &self.namespace {
            None => cmds
                .iter()
                .for_each(|cmd| cmd.pack_into(&mut self.write_buf)),
            Some(namespace) => {
                // Every command is checked before any is sent: a refused one sends nothing.
                let mut keys = Vec::with_capacity(cmds.len());
                let mut queued = self.queued_keys.clone();
                for cmd in cmds {
                    let (namespaced, reply_keys) = namespace.command(cmd)?;
                    namespaced.pack_into(&mut self.write_buf);
                    // A transaction's replies come in EXEC's array, not one by one.
                    keys.push(if cmd.name_is("multi") {
                        queued = Some(Vec::new());
                        ReplyKeys::Untouched
                    } else if cmd.name_is("exec") {
                        ReplyKeys::Transaction(queued.take().unwrap_or_default())
                    } else if cmd.name_is("discard") {
                        queued = None;
                        ReplyKeys::Untouched
                    } else if let Some(queued) = queued.as_mut() {
                        queued.push(reply_keys);
                        ReplyKeys::Untouched // QUEUED
                    } else {
                        reply_keys
                    });
                }
                self.queued_keys = queued;
                self.subscribed |= keys.contains(&ReplyKeys::PubSub);
                self.reply_keys.extend(keys);
            }
        }
        self.sent = false;
        self.unanswered += cmds.len();
        self.flush_write_buf(cancel)
    }

    /// Reads the next reply off the connection.
    pub fn receive(&mut self, cancel: &CancelToken) -> Result<Reply> {
        let _watch = cancel
            .watch(self.stream.as_raw_fd())
            .ok_or(Error::Interrupted)?;
        let mut reply = self.read_reply(cancel)?;
        if let Some(namespace) = &self.namespace {
            let keys = self.reply_keys.pop_front().unwrap_or(if self.subscribed {
                ReplyKeys::PubSub
            } else {
                ReplyKeys::Untouched
            });
            reply = namespace.reply(reply, keys);
        }
        // Saturating: a subscription gets several replies to one SUBSCRIBE, and messages.
        self.unanswered = self.unanswered.saturating_sub(1);
        Ok(reply)
    }

    /// From now on, dropping this connection with commands unanswered hands its socket to
    /// `in_doubt` instead of just closing it.
    pub(crate) fn report_unanswered_to(&mut self, in_doubt: Arc<InDoubt>) {
        self.in_doubt = Some(in_doubt);
    }

    /// How many replies of the last batch sent were read: after a failure, zero means the
    /// server may not have run any of it (redis-rb retries only then), more means it ran at
    /// least those and the batch must not be sent again.
    /// Whether the last batch may have reached the server (see `sent`).
    pub fn sent_anything(&self) -> bool {
        self.sent
    }

    /// Sends every command before reading any reply: one round trip for the batch.
    pub fn pipeline(&mut self, cmds: &[Command], cancel: &CancelToken) -> Result<Vec<Reply>> {
        self.send_batch(cmds, cancel)?;
        cmds.iter().map(|_| self.receive(cancel)).collect()
    }

    /// The socket, for a caller that waits for it to become readable without holding the
    /// connection (see `Session::next_message`).
    pub fn socket(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Whether a reply (or the start of one, or the server closing) can be read without
    /// waiting for the server.
    pub fn input_ready(&mut self) -> bool {
        if self.reader.has_buffered() || self.stream.has_decrypted_input() {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local buffer on a socket this connection owns.
        let peeked = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        peeked >= 0
            || !matches!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::EINTR)
            )
    }

    /// Marks the connection as going back to the pool.
    pub(crate) fn set_idle(&mut self) {
        self.idle_since = Instant::now();
    }

    /// Whether a connection taken from the pool can still be used. A server closes connections
    /// idle longer than its `timeout` setting, CLIENT KILL closes them, a restart closes them
    /// all (and a proxy or firewall may drop them). A write sent on such a connection fails
    /// after it left, when it can no longer be told from one the server ran before closing
    /// (see `Node::with_retry`): so it is not sent again, and the caller would get the error.
    /// One peek at the socket tells before anything is sent, without a round trip -- but a
    /// system call, which costs a busy client about a fifth of its throughput when taken on
    /// every call (measured with 8 threads on 2 cores). So a connection back in use within a
    /// millisecond is not looked at: closed in that millisecond, a write on it raises.
    pub(crate) fn still_open(&self) -> bool {
        if self.idle_since.elapsed() < STILL_OPEN_CHECK_AFTER {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local buffer on a socket this connection owns; nothing
        // is consumed.
        let peeked = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        // 0: the server closed it; > 0: bytes nobody asked for (a connection out of step);
        // an error other than "nothing to read" (reset): unusable too.
        peeked < 0
            && matches!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::EINTR)
            )
    }

    /// Runs `f` with a different read timeout (a blocking command's), then restores the
    /// configured one. `None` waits forever.
    pub fn with_read_timeout<T>(
        &mut self,
        timeout: Option<Duration>,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        if timeout == self.read_timeout {
            return f(self);
        }
        self.stream
            .set_read_timeout(timeout)
            .map_err(|e| Error::from_io(&e))?;
        self.awaiting_blocking_reply = true;
        let result = f(self);
        self.awaiting_blocking_reply = false;
        if result.is_ok() {
            let configured = self.read_timeout;
            self.stream
                .set_read_timeout(configured)
                .map_err(|e| Error::from_io(&e))?;
        }
        result
    }

    fn flush_write_buf(&mut self, cancel: &CancelToken) -> Result<()> {
        let mut written = 0;
        while written < self.write_buf.len() {
            match self.stream.write(&self.write_buf[written..]) {
                Ok(0) => return Err(Error::from_io(&io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => {
                    written += n;
                    self.sent = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if cancel.stop_after_signal() {
                        return Err(Error::Interrupted);
                    }
                }
                Err(_) if cancel.is_cancelled() => return Err(Error::Interrupted),
                Err(e) => return Err(Error::from_io(&e)),
            }
        }
        // TLS buffers records: make sure they left.
        self.stream.flush().map_err(|e| Error::from_io(&e))
    }

    fn read_reply(&mut self, cancel: &CancelToken) -> Result<Reply> {
        let mut waiting = ReplyWait {
            cancel,
            // A blocking command's reply may take seconds: not worth polling for.
            spin: (!self.awaiting_blocking_reply)
                .then_some((&mut self.spin, self.stream.as_raw_fd())),
        };
        match self.reader.read(&mut self.stream, &mut waiting) {
            Ok(reply) => Ok(reply),
            Err(_) if cancel.is_cancelled() => Err(Error::Interrupted),
            Err(e) => Err(Error::from_io(&e)),
        }
    }
}

/// While a reply is read: signals end the wait when the caller was interrupted, and each time
/// the reader runs out of bytes (before the reply, and between the chunks of a long one) the
/// connection polls briefly before sleeping.
struct ReplyWait<'a> {
    cancel: &'a CancelToken,
    spin: Option<(&'a mut SpinWait, RawFd)>,
}

impl crate::protocol::reply::Waiting for ReplyWait<'_> {
    fn stop(&self) -> bool {
        self.cancel.stop_after_signal()
    }

    fn before_read(&mut self) {
        if let Some((spin, fd)) = &mut self.spin {
            spin.before_blocking_read(*fd);
        }
    }
}

/// Connects to the first address of `host` that answers, each attempt bounded by `timeout` and
/// interruptible (a plain blocking `connect` is neither when the timeout is 0, "forever").
fn connect_tcp(
    host: &str,
    port: u16,
    timeout: Option<Duration>,
    cancel: &CancelToken,
) -> io::Result<TcpStream> {
    let mut last_err = None;
    for addr in (host, port).to_socket_addrs()? {
        match connect_addr(&addr, timeout, cancel) {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host resolved to no address")))
}

fn connect_addr(
    addr: &std::net::SocketAddr,
    timeout: Option<Duration>,
    cancel: &CancelToken,
) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    let _watch = cancel
        .watch(socket.as_raw_fd())
        .ok_or_else(|| io::Error::from(io::ErrorKind::Interrupted))?;
    match socket.connect(&(*addr).into()) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(libc::EINPROGRESS)
                || e.kind() == io::ErrorKind::WouldBlock =>
        {
            crate::transport::poll::wait(socket.as_raw_fd(), Ready::Writable, timeout, cancel)?;
            if let Some(err) = socket.take_error()? {
                return Err(err);
            }
        }
        Err(e) => return Err(e),
    }
    socket.set_nonblocking(false)?;
    Ok(socket.into())
}

pub(crate) fn run_id(info: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(info).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_string())
}
