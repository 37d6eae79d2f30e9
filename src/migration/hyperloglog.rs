//! A HyperLogLog's registers, decoded from the string Redis stores it as, so two stores can be
//! compared by what the HLL counts rather than by its bytes. PFCOUNT rewrites the cached
//! cardinality in the header of the copy it ran on (a read routed to one store changes that
//! store's bytes only), and the same registers may be stored sparse on one server and dense on
//! another (`hll-sparse-max-bytes`): neither is a difference in the data.
//!
//! Layout (Redis's hyperloglog.c): "HYLL", an encoding byte (0 dense, 1 sparse), three unused
//! bytes, eight bytes of cached cardinality, then the registers: dense, 16384 six-bit registers
//! packed little-endian; sparse, runs of ZERO (`00xxxxxx`: 1..64 zeros), XZERO
//! (`01xxxxxx yyyyyyyy`: 1..16384 zeros) and VAL (`1vvvvvxx`: 1..4 registers of value 1..32).

const REGISTERS: usize = 16384;
const BITS: usize = 6;
const HEADER: usize = 16;
const DENSE: u8 = 0;
const SPARSE: u8 = 1;

/// The 16384 registers, or `None` when `value` is not a well-formed HyperLogLog.
pub fn registers(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < HEADER || &value[..4] != b"HYLL" {
        return None;
    }
    let body = &value[HEADER..];
    match value[4] {
        DENSE => dense(body),
        SPARSE => sparse(body),
        _ => None,
    }
}

fn dense(body: &[u8]) -> Option<Vec<u8>> {
    if body.len() != (REGISTERS * BITS).div_ceil(8) {
        return None;
    }
    Some(
        (0..REGISTERS)
            .map(|i| {
                let byte = i * BITS / 8;
                let shift = i * BITS % 8;
                let low = u16::from(body[byte]) >> shift;
                let high = body
                    .get(byte + 1)
                    .map_or(0, |b| u16::from(*b) << (8 - shift));
                ((low | high) & 0x3f) as u8
            })
            .collect(),
    )
}

fn sparse(body: &[u8]) -> Option<Vec<u8>> {
    let mut registers = Vec::with_capacity(REGISTERS);
    let mut i = 0;
    while i < body.len() {
        let op = body[i];
        let (value, run, width) = match op >> 6 {
            0b00 => (0, usize::from(op & 0x3f) + 1, 1),
            0b01 => {
                let low = *body.get(i + 1)?;
                (0, ((usize::from(op & 0x3f) << 8) | usize::from(low)) + 1, 2)
            }
            _ => (((op >> 2) & 0x1f) + 1, usize::from(op & 0x03) + 1, 1),
        };
        if registers.len() + run > REGISTERS {
            return None;
        }
        registers.extend(std::iter::repeat_n(value, run));
        i += width;
    }
    (registers.len() == REGISTERS).then_some(registers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(encoding: u8, cached: u8) -> Vec<u8> {
        let mut value = b"HYLL".to_vec();
        value.extend([encoding, 0, 0, 0]);
        value.extend([cached; 8]);
        value
    }

    #[test]
    fn reads_sparse_and_dense_forms_of_the_same_registers_alike() {
        // Register 2 = 3, register 16383 = 1, the rest zero.
        let mut sparse = header(SPARSE, 0);
        sparse.push(0b0000_0001); // ZERO x2
        sparse.push(0b1000_1000); // VAL 3 x1
        let zeros = REGISTERS - 4; // registers 3..=16382
        sparse.push(0b0100_0000 | ((zeros - 1) >> 8) as u8); // XZERO
        sparse.push(((zeros - 1) & 0xff) as u8);
        sparse.push(0b1000_0000); // VAL 1 x1

        let mut dense_body = vec![0u8; (REGISTERS * BITS).div_ceil(8)];
        let mut set = |index: usize, value: u8| {
            let byte = index * BITS / 8;
            let shift = index * BITS % 8;
            dense_body[byte] |= value << shift;
            if shift > 2 {
                dense_body[byte + 1] |= value >> (8 - shift);
            }
        };
        set(2, 3);
        set(REGISTERS - 1, 1);
        let mut dense = header(DENSE, 7);
        dense.extend(dense_body);

        let from_sparse = registers(&sparse).expect("sparse");
        assert_eq!(from_sparse[2], 3);
        assert_eq!(from_sparse[REGISTERS - 1], 1);
        assert_eq!(from_sparse.iter().filter(|r| **r != 0).count(), 2);
        assert_eq!(registers(&dense), Some(from_sparse));
    }

    #[test]
    fn ignores_the_cached_cardinality_and_refuses_what_is_not_an_hll() {
        let mut a = header(SPARSE, 0);
        a.extend([0b0111_1111, 0xff]); // XZERO 16384
        let mut b = a.clone();
        b[8] = 0x80; // a different cached cardinality
        assert_eq!(registers(&a), registers(&b));
        assert!(registers(&a).is_some());
        assert_eq!(registers(b"HYLL"), None);
        assert_eq!(registers(b"plain string value"), None);
        let mut short = header(SPARSE, 0);
        short.push(0b0000_0001);
        assert_eq!(registers(&short), None, "runs must cover every register");
    }
}
