//! Real redis-server processes for the core's tests: each on a free loopback port, in a
//! throw-away directory, killed when dropped.

#![allow(dead_code)]

use gitlab_multistore::{CancelToken, Command, Error, ReadTimeout, Reply, Store, StoreConfig};
use redis::Value;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    pub socket: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let port = free_port();
        let socket = dir.path().join("redis.sock");
        let child = Process::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--unixsocket", socket.to_str().expect("utf-8 temp path")])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
            ])
            .args(["--dir", dir.path().to_str().expect("utf-8 temp path")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (Debian package redis-server)");
        let server = RedisServer {
            port,
            socket,
            child,
            _dir: dir,
        };
        server.wait_until_ready();
        server
    }

    pub fn config(&self) -> StoreConfig {
        StoreConfig::tcp("127.0.0.1", self.port)
    }

    /// Runs a command through the `redis` crate's own client: an independent implementation
    /// to inspect what the server holds.
    pub fn query(&self, args: &[&str]) -> Value {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .expect("test server URL");
        let mut conn = client.get_connection().expect("connect to the test server");
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn).expect("query the test server")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server (SIGSTOP): connected, it answers nothing until `resume`.
    pub fn pause(&self) {
        // SAFETY: signals a child process this struct owns.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGSTOP) };
    }

    pub fn resume(&self) {
        // SAFETY: as in `pause`.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGCONT) };
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.socket.exists() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

pub fn status(s: &str) -> Reply {
    Reply::Status(s.as_bytes().to_vec())
}

/// One command through a store, waiting the configured read timeout.
pub fn call(store: &Store, args: &[&str]) -> Result<Reply, Error> {
    store.call(
        &Command::from_args(args),
        ReadTimeout::Configured,
        &CancelToken::new(),
    )
}
