//! Requests in doubt: commands sent whose replies nobody read (the read timed out, or the
//! caller was interrupted). The server may still run them -- a stopped server when it resumes,
//! a busy one when its script ends -- and a write landing that late on one store, after the
//! re-sync, a verify or a backfill looked at its key, would leave the stores different with
//! nobody knowing. So such a socket is not simply closed: its write side is shut (the server
//! runs what it already received, then reads the end of the stream and frees the client, so
//! nothing more of it can run), and the socket is kept until the server closes it. `settle`
//! waits for that; whoever compares or copies keys settles both stores first.

use crate::error::{Error, Result};
use crate::fork::{self, ForkSafeMutex};
use crate::transport::cancel::CancelToken;
use crate::transport::poll::{self, Ready};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Sockets kept per store at most. A store that keeps timing out trips its circuit breaker
/// long before this; past it, the oldest socket is let go and the loss counted, which asks for
/// a full verify.
const CAPACITY: usize = 256;

/// How long a verify or backfill waits, before it starts, for a store to finish requests in
/// doubt (a script still running past the read timeout, a server paused for a moment).
pub const WAIT_BEFORE_COMPARING: Duration = Duration::from_secs(5);

/// How long one re-sync round waits; it is tried again soon after.
pub const WAIT_BEFORE_RESYNC: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct InDoubt {
    sockets: ForkSafeMutex<Vec<Socket>>,
    /// Sockets let go before the server closed them: what they carried may still run unseen.
    given_up: AtomicU64,
    on_given_up: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

struct Socket {
    fd: OwnedFd,
    /// The process that sent the requests: a forked child never reads its parent's sockets.
    fork_generation: u64,
}

impl InDoubt {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn on_given_up(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_given_up.set(Box::new(hook));
    }

    fn give_up_one(&self) {
        self.given_up.fetch_add(1, Ordering::AcqRel);
        if let Some(hook) = self.on_given_up.get() {
            hook();
        }
    }

    /// Takes over a socket whose last requests were not answered: shuts its write side and
    /// keeps a duplicate of it until the server has closed it.
    pub(crate) fn adopt(&self, fd: RawFd, fork_generation: u64) {
        if fork_generation != fork::generation() {
            return; // the parent's socket: shutting it would break the parent's connection
        }
        // SAFETY: `fd` is an open socket of the connection being dropped; the duplicate is a
        // new descriptor this value owns from here on.
        let duplicate = unsafe { libc::dup(fd) };
        if duplicate < 0 {
            self.give_up_one();
            return;
        }
        // SAFETY: `duplicate` was just returned by dup and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(duplicate) };
        // SAFETY: a socket descriptor this value owns.
        unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
        let mut sockets = self.sockets.lock();
        sockets.retain(|s| !closed_by_server(s));
        let full = sockets.len() >= CAPACITY;
        if full {
            sockets.remove(0);
        }
        sockets.push(Socket {
            fd,
            fork_generation,
        });
        drop(sockets);
        if full {
            tracing::warn!("too many requests in doubt on one store: a full verify is needed");
            self.give_up_one();
        }
    }

    /// How many sockets still wait for their server, after a look that does not wait.
    pub fn pending(&self) -> usize {
        let mut sockets = self.sockets.lock();
        sockets.retain(|s| s.fork_generation == fork::generation() && !closed_by_server(s));
        sockets.len()
    }

    /// How many sockets were let go before their server closed them, ever.
    pub fn given_up(&self) -> u64 {
        self.given_up.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` until the server has closed every socket in doubt: whatever
    /// those requests were, they have run or never will. `Error::Timeout` when some are still
    /// open (a stopped or busy server), `Error::Interrupted` when the caller was.
    pub fn settle(&self, timeout: Duration, cancel: &CancelToken) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let fds: Vec<RawFd> = {
                let mut sockets = self.sockets.lock();
                sockets.retain(|s| s.fork_generation == fork::generation() && !closed_by_server(s));
                sockets.iter().map(|s| s.fd.as_raw_fd()).collect()
            };
            if fds.is_empty() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            // The lock is not held while waiting: a socket adopted meanwhile is seen on the
            // next turn. One closed meanwhile by another settle (its descriptor number maybe
            // reused) only makes this wait end early; the loop looks again.
            match poll::wait_any(&fds, Ready::Readable, Some(left), cancel) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(Error::Timeout),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(Error::Interrupted),
                Err(e) => return Err(Error::from_io(&e)),
            }
        }
    }
}

/// Reads (and discards) whatever the server sent without waiting; true once it has closed the
/// socket (end of stream, or an error such as a reset): nothing more of it will run.
fn closed_by_server(socket: &Socket) -> bool {
    let mut scratch = [0u8; 16 * 1024];
    loop {
        // SAFETY: reads into a local buffer of the given length from a socket this value owns.
        let n = unsafe {
            libc::recv(
                socket.fd.as_raw_fd(),
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return true,
            n if n > 0 => continue,
            _ => {
                return !matches!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::EAGAIN) | Some(libc::EINTR)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_socket_settles_once_its_server_has_read_everything_and_closed_it() {
        let in_doubt = InDoubt::new();
        let (mut client, mut server) = pair();
        client.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        in_doubt.adopt(client.as_raw_fd(), fork::generation());
        drop(client);
        assert_eq!(in_doubt.pending(), 1);
        let cancel = CancelToken::new();
        assert!(matches!(
            in_doubt.settle(Duration::from_millis(50), &cancel),
            Err(Error::Timeout)
        ));

        // The server reads the request, then the end of the stream the shut write side sent,
        // and closes its end.
        let mut received = Vec::new();
        server.read_to_end(&mut received).unwrap();
        assert_eq!(received, b"*1\r\n$4\r\nPING\r\n");
        server.write_all(b"+PONG\r\n").unwrap();
        drop(server);

        in_doubt.settle(Duration::from_secs(5), &cancel).unwrap();
        assert_eq!(in_doubt.pending(), 0);
        assert_eq!(in_doubt.given_up(), 0);
    }

    #[test]
    fn a_socket_of_another_process_is_never_adopted() {
        let in_doubt = InDoubt::new();
        let (client, _server) = pair();
        in_doubt.adopt(client.as_raw_fd(), fork::generation().wrapping_add(1));
        assert_eq!(in_doubt.pending(), 0);
    }
}
