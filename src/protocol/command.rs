//! One Redis command as the bytes of its arguments, stored contiguously so converting a Ruby
//! call costs one growing buffer instead of an allocation per argument.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Command {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(args: usize, bytes: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(args),
        }
    }

    /// Builds a command from string-like arguments; handy in Rust callers and tests.
    pub fn from_args<I, A>(args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        let mut cmd = Self::new();
        for arg in args {
            cmd.push(arg.as_ref());
        }
        cmd
    }

    pub fn push(&mut self, arg: &[u8]) {
        self.data.extend_from_slice(arg);
        self.ends.push(self.data.len());
    }

    /// Appends an argument written in place by `write`, avoiding a temporary buffer for
    /// integers and other values the caller formats itself.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.data);
        self.ends.push(self.data.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn arg(&self, index: usize) -> Option<&[u8]> {
        let end = *self.ends.get(index)?;
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        Some(&self.data[start..end])
    }

    pub fn args(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).filter_map(move |i| self.arg(i))
    }

    /// The command name, lower-cased, as the command table spells it.
    pub fn name(&self) -> String {
        self.arg(0)
            .map(|n| String::from_utf8_lossy(n).to_ascii_lowercase())
            .unwrap_or_default()
    }

    pub fn name_is(&self, lowercase_name: &str) -> bool {
        self.arg(0)
            .is_some_and(|n| n.eq_ignore_ascii_case(lowercase_name.as_bytes()))
    }

    /// Writes the command in RESP, the multi-bulk form every Redis version accepts.
    pub fn pack_into(&self, out: &mut Vec<u8>) {
        out.push(b'*');
        push_decimal(out, self.len());
        out.extend_from_slice(b"\r\n");
        for arg in self.args() {
            out.push(b'$');
            push_decimal(out, arg.len());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_binary_safe_multi_bulk() {
        let cmd = Command::from_args([&b"SET"[..], b"k\r\n", b"\x00\xff"]);
        let mut out = Vec::new();
        cmd.pack_into(&mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n\x00\xff\r\n");
    }

    #[test]
    fn keeps_empty_arguments_and_reads_them_back() {
        let cmd = Command::from_args(["get", ""]);
        assert_eq!(cmd.len(), 2);
        assert_eq!(cmd.arg(1), Some(&b""[..]));
        assert_eq!(cmd.arg(2), None);
        assert!(cmd.name_is("get"));
        assert_eq!(Command::from_args(["GeT"]).name(), "get");
    }
}
