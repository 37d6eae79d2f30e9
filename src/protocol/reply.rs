//! RESP2 replies, parsed by the core itself.
//!
//! The `redis` crate's parser stores error and status lines as Rust `String`s, so an error
//! reply that is not valid UTF-8 (an unknown command named with binary bytes, a Lua
//! `{err=...}` with arbitrary bytes) became a protocol error, where redis-rb raises
//! `Redis::CommandError` with the raw bytes. Replies here keep every line as bytes, which is
//! what a drop-in redis-rb client needs; RESP2 is small enough that the parser stays short.

use std::io::{self, Read};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A nil bulk string or nil array.
    Nil,
    Integer(i64),
    Bulk(Vec<u8>),
    /// A status line (`+OK`).
    Status(Vec<u8>),
    /// An error line (`-WRONGTYPE …`), as sent.
    Error(Vec<u8>),
    Array(Vec<Reply>),
}

impl Reply {
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// The error's code, its first word (`NOSCRIPT`, `WRONGTYPE`).
    pub fn error_code(&self) -> Option<&[u8]> {
        match self {
            Reply::Error(line) => line.split(|b| *b == b' ').next(),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(b) | Reply::Status(b) => Some(b),
            _ => None,
        }
    }
}

/// Error lines the way redis-rb presents them: `line.strip`.
pub fn error_message(line: &[u8]) -> &[u8] {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = line.iter().position(|b| !is_space(b)).unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !is_space(b) && *b != 0)
        .map_or(start, |i| i + 1);
    &line[start..end.max(start)]
}

/// A reply that begins with a byte no RESP2 reply begins with (redis-rb's `ProtocolError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnexpectedType(pub u8);

impl std::fmt::Display for UnexpectedType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unexpected reply type byte {:?}", self.0 as char)
    }
}

impl std::error::Error for UnexpectedType {}

/// What the reader asks its caller while it waits on the socket.
pub trait Waiting {
    /// A read was interrupted by a signal: true gives up (`Interrupted`), false retries.
    fn stop(&self) -> bool;

    /// The reader is about to block for more bytes.
    fn before_read(&mut self) {}
}

/// A plain closure answers `stop` and never waits in any other way.
impl<F: Fn() -> bool> Waiting for F {
    fn stop(&self) -> bool {
        self()
    }
}

/// Reads replies off a stream through its own buffer, keeping what is left over for the next.
pub struct ReplyReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

const CHUNK: usize = 16 * 1024;
/// Redis refuses bulk strings longer than its `proto-max-bulk-len` (512 MB by default); a longer
/// announced length comes from a corrupt stream or a hostile server.
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// A value's buffer is allocated up to this size at once; a longer one grows as its bytes
/// arrive, so a length announced but never sent costs no memory.
const PREALLOCATE_AT_MOST: usize = 1024 * 1024;
/// Nesting deeper than this is not something Redis sends; refusing it keeps a corrupt stream
/// from overflowing the stack.
const MAX_DEPTH: usize = 128;

impl Default for ReplyReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyReader {
    pub fn new() -> Self {
        ReplyReader {
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
        }
    }

    /// Whether bytes received earlier wait to be parsed.
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// Reads one complete reply. `InvalidData` means the stream is not RESP. A read interrupted
    /// by a signal is retried unless `stop` says otherwise (then `Interrupted` is returned and
    /// the half-read reply is lost with the connection).
    pub fn read<R: Read>(&mut self, stream: &mut R, wait: &mut dyn Waiting) -> io::Result<Reply> {
        self.read_nested(stream, 0, wait)
    }

    fn read_nested<R: Read>(
        &mut self,
        stream: &mut R,
        depth: usize,
        wait: &mut dyn Waiting,
    ) -> io::Result<Reply> {
        if depth > MAX_DEPTH {
            return Err(invalid("reply nested too deeply"));
        }
        // The line is looked at in place: only status and error lines are kept, so a bulk
        // string's header costs no allocation.
        let (start, end) = self.read_line(stream, wait)?;
        let Some((&kind, rest)) = self.buf[start..end].split_first() else {
            return Err(invalid("empty reply line"));
        };
        match kind {
            b'+' => Ok(Reply::Status(rest.to_vec())),
            b'-' => Ok(Reply::Error(rest.to_vec())),
            b':' => parse_int(rest).map(Reply::Integer),
            b'$' => {
                let len = parse_int(rest)?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                let len = usize::try_from(len).map_err(|_| invalid("bulk length"))?;
                if len > MAX_BULK_LEN {
                    return Err(invalid(&format!(
                        "bulk length {len} is beyond the 512 MB Redis allows"
                    )));
                }
                let mut data = self.read_exact(stream, len + 2, wait)?;
                if data.get(len..) != Some(b"\r\n") {
                    return Err(invalid("bulk string not terminated by CRLF"));
                }
                data.truncate(len);
                Ok(Reply::Bulk(data))
            }
            b'*' => {
                let len = parse_int(rest)?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                let len = usize::try_from(len).map_err(|_| invalid("array length"))?;
                let mut items = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    items.push(self.read_nested(stream, depth + 1, wait)?);
                }
                Ok(Reply::Array(items))
            }
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                UnexpectedType(other),
            )),
        }
    }

    /// Where the next line (without its CRLF) is in the buffer, valid until the next read.
    fn read_line<R: Read>(
        &mut self,
        stream: &mut R,
        wait: &mut dyn Waiting,
    ) -> io::Result<(usize, usize)> {
        let mut scanned = self.start;
        loop {
            if let Some(offset) = self.buf[scanned..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let line = (self.start, scanned + offset);
                self.start = line.1 + 2;
                return Ok(line);
            }
            // Keep the last byte: it may be the CR of a CRLF split across reads.
            scanned = self.end.saturating_sub(1).max(self.start);
            let before = self.start;
            self.fill(stream, wait)?;
            scanned -= before - self.start;
        }
    }

    fn read_exact<R: Read>(
        &mut self,
        stream: &mut R,
        len: usize,
        wait: &mut dyn Waiting,
    ) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len.min(PREALLOCATE_AT_MOST));
        let buffered = (self.end - self.start).min(len);
        out.extend_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        // Large values go straight from the socket into their own buffer, which at most doubles
        // before the bytes that fill it have arrived.
        while out.len() < len {
            let filled = out.len();
            let grow = (len - filled).min(filled.max(PREALLOCATE_AT_MOST));
            out.resize(filled + grow, 0);
            read_fully(stream, &mut out[filled..], wait)?;
        }
        Ok(out)
    }

    /// Reads more bytes, moving what is unread to the front first.
    fn fill<R: Read>(&mut self, stream: &mut R, wait: &mut dyn Waiting) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        wait.before_read();
        loop {
            match stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted && !wait.stop() => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn read_fully<R: Read>(
    stream: &mut R,
    mut out: &mut [u8],
    wait: &mut dyn Waiting,
) -> io::Result<()> {
    while !out.is_empty() {
        match stream.read(out) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => out = &mut out[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted && !wait.stop() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A decimal integer as `str::parse::<i64>` reads it (optional sign, overflow refused),
/// without going through `str`.
fn parse_int(text: &[u8]) -> io::Result<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err(invalid("malformed integer"));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(invalid("malformed integer"));
        }
        let digit = i64::from(d - b'0');
        n = n
            .checked_mul(10)
            .and_then(|n| {
                if negative {
                    n.checked_sub(digit)
                } else {
                    n.checked_add(digit)
                }
            })
            .ok_or_else(|| invalid("malformed integer"))?;
    }
    Ok(n)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the input a few bytes at a time, as a socket may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn parse_all(input: &[u8], step: usize) -> Vec<Reply> {
        let mut reader = ReplyReader::new();
        let mut stream = Trickle(input, step);
        let mut out = Vec::new();
        while let Ok(reply) = reader.read(&mut stream, &mut || false) {
            out.push(reply);
        }
        out
    }

    #[test]
    fn parses_every_reply_type_whatever_the_read_sizes() {
        let input =
            b"+OK\r\n-ERR bad \xff\r\n:-42\r\n$3\r\na\r\n\r\n$-1\r\n*2\r\n$1\r\nx\r\n*-1\r\n*0\r\n";
        let expected = vec![
            Reply::Status(b"OK".to_vec()),
            Reply::Error(b"ERR bad \xff".to_vec()),
            Reply::Integer(-42),
            Reply::Bulk(b"a\r\n".to_vec()),
            Reply::Nil,
            Reply::Array(vec![Reply::Bulk(b"x".to_vec()), Reply::Nil]),
            Reply::Array(vec![]),
        ];
        for step in [1, 2, 3, 7, 1024] {
            assert_eq!(parse_all(input, step), expected, "read size {step}");
        }
    }

    #[test]
    fn reads_values_larger_than_the_buffer() {
        let value = vec![b'v'; 3 * CHUNK + 5];
        let mut input = format!("${}\r\n", value.len()).into_bytes();
        input.extend_from_slice(&value);
        input.extend_from_slice(b"\r\n:1\r\n");
        assert_eq!(
            parse_all(&input, 5000),
            vec![Reply::Bulk(value), Reply::Integer(1)]
        );
    }

    #[test]
    fn parses_integers_as_str_parse_does() {
        for text in [
            "0",
            "-42",
            "+7",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            assert_eq!(
                parse_int(text.as_bytes()).ok(),
                text.parse::<i64>().ok(),
                "{text}"
            );
        }
        for text in ["", "-", "1x", "9223372036854775808", " 1"] {
            assert!(parse_int(text.as_bytes()).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_huge_announced_length_is_refused_and_a_long_one_allocates_as_it_arrives() {
        let mut reader = ReplyReader::new();
        let err = reader
            .read(&mut &b"$1000000000000\r\nabc"[..], &mut || false)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // 100 MB announced, 3 bytes sent: the stream ends long before the buffer is filled.
        let mut reader = ReplyReader::new();
        let err = reader
            .read(&mut &b"$100000000\r\nabc"[..], &mut || false)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn rejects_what_is_not_resp() {
        let mut reader = ReplyReader::new();
        let err = reader
            .read(&mut &b"HTTP/1.1 200 OK\r\n"[..], &mut || false)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn strips_error_lines_like_ruby() {
        assert_eq!(error_message(b"  ERR padded  "), b"ERR padded");
        assert_eq!(error_message(b"ERR x \0"), b"ERR x");
        assert_eq!(error_message(b"   "), b"");
    }
}
