//! Which of a cluster's 16,384 hash slots a key lives in.

pub const SLOTS: usize = 16384;

/// The hash slot of a key: CRC16 (XMODEM) of the key, or of its `{hash tag}` when it has a
/// non-empty one, modulo 16384 — Redis's own `keyHashSlot`.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            match rest.iter().position(|b| *b == b'}') {
                Some(len) if len > 0 => Some(&rest[..len]),
                _ => None,
            }
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS as u16
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= (*byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_key_hash_slot() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag, or an unclosed one, hashes the whole key.
        assert_eq!(key_slot(b"{}foo"), crc16(b"{}foo") % 16384);
        assert_eq!(key_slot(b"foo{"), crc16(b"foo{") % 16384);
        assert_eq!(key_slot(b"{a}{b}"), key_slot(b"a"));
    }
}
