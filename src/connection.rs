//! One socket to one Redis server, speaking RESP2: commands are packed here, replies parsed by
//! `reply.rs`. The core owns the socket itself (rather than the `redis` crate's `Connection`)
//! because an interrupt has to shut the socket down from another thread,
//! and a blocking command has to change the read timeout for one call.

use crate::cancel::CancelToken;
use crate::command::Command;
use crate::config::{Address, StoreConfig};
use crate::error::{Error, Result, ServerErrorReply};
pub use crate::reply::Reply;
use crate::reply::ReplyReader;
use crate::spin_wait::SpinWait;
use crate::tls::TlsStream;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

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
            Stream::Tls(s) => s.read(buf),
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
    /// Which pool epoch opened it: a `select` or `disconnect` starts a new epoch and older
    /// connections are closed instead of being reused.
    pub(crate) epoch: u64,
    /// The server's run_id when this connection was opened.
    pub(crate) run_id: Option<String>,
}

impl Connection {
    /// Connects and runs the handshake redis-rb runs: AUTH, SELECT, CLIENT SETNAME.
    pub fn open(config: &StoreConfig, cancel: &CancelToken, epoch: u64) -> Result<Connection> {
        let location = config.address.location();
        let stream = match &config.address {
            Address::Tcp { host, port } => {
                let stream = connect_tcp(host, *port, config.connect_timeout)
                    .map_err(|e| Error::cannot_connect(&location, &e))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| Error::cannot_connect(&location, &e))?;
                if config.ssl {
                    // redis-rb lets OpenSSL's error through; here it is a failure to connect that
                    // names it, so `rescue Redis::BaseConnectionError` covers it.
                    let tls = crate::tls::connect(stream, host, &config.tls).map_err(|e| {
                        Error::CannotConnect {
                            location: location.clone(),
                            cause: format!("OpenSSL::SSL::SSLError: {e}"),
                        }
                    })?;
                    Stream::Tls(Box::new(tls))
                } else {
                    Stream::Tcp(stream)
                }
            }
            Address::Unix { path } => Stream::Unix(
                UnixStream::connect(path).map_err(|e| Error::cannot_connect(&location, &e))?,
            ),
        };
        stream
            .set_read_timeout(config.read_timeout)
            .and_then(|_| stream.set_write_timeout(config.write_timeout))
            .map_err(|e| Error::cannot_connect(&location, &e))?;

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
            epoch,
            run_id: None,
        };
        // As redis-rb: a timeout during AUTH/SELECT is a TimeoutError, not a failure to connect.
        conn.run_id = conn.handshake(config, cancel)?;
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
        Ok(info.as_ref().and_then(Reply::as_bytes).and_then(run_id))
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
        for cmd in cmds {
            cmd.pack_into(&mut self.write_buf);
        }
        self.flush_write_buf(cancel)
    }

    /// Reads the next reply off the connection.
    pub fn receive(&mut self, cancel: &CancelToken) -> Result<Reply> {
        let _watch = cancel
            .watch(self.stream.as_raw_fd())
            .ok_or(Error::Interrupted)?;
        self.read_reply(cancel)
    }

    /// Sends every command before reading any reply: one round trip for the batch.
    pub fn pipeline(&mut self, cmds: &[Command], cancel: &CancelToken) -> Result<Vec<Reply>> {
        self.send_batch(cmds, cancel)?;
        cmds.iter().map(|_| self.receive(cancel)).collect()
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
                Ok(n) => written += n,
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

impl crate::reply::Waiting for ReplyWait<'_> {
    fn stop(&self) -> bool {
        self.cancel.stop_after_signal()
    }

    fn before_read(&mut self) {
        if let Some((spin, fd)) = &mut self.spin {
            spin.before_blocking_read(*fd);
        }
    }
}

fn connect_tcp(host: &str, port: u16, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let mut last_err = None;
    for addr in (host, port).to_socket_addrs()? {
        let attempt = match timeout {
            Some(t) => TcpStream::connect_timeout(&addr, t),
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host resolved to no address")))
}

fn run_id(info: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(info).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_string())
}
