//! Redis's glob (`*`, `?`, `[...]` with `^` and ranges, `\` escapes), for filtering keys drawn
//! at random the way SCAN MATCH filters a scan.
//!
//! Matched greedily with one backtracking point, the last `*`: every other token matches
//! exactly one byte, so on a mismatch only the text the last star swallowed needs to grow. That
//! is O(pattern × key) at worst; a recursive matcher that retries every star is exponential
//! (`*a*a*a*a*a*a*a*a*a*a*a*ab` against sixty `a`s never finishes).

/// Whether `text` matches `pattern`, as Redis's `stringmatchlen` decides it.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // After the last star: where the pattern resumes, and where in the text that attempt began.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if pattern.get(p) == Some(&b'*') {
            while pattern.get(p) == Some(&b'*') {
                p += 1;
            }
            if p == pattern.len() {
                return true;
            }
            star = Some((p, t));
            continue;
        }
        if let Some(next) = token_matches(pattern, p, text[t]) {
            p = next;
            t += 1;
            continue;
        }
        match star {
            // Let the star swallow one more byte and try the rest again from there.
            Some((resume, began)) => {
                p = resume;
                t = began + 1;
                star = Some((resume, began + 1));
            }
            None => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&b| b == b'*')
}

/// If the token at `p` (not a star) matches `c`: the position after the token.
fn token_matches(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    match *pattern.get(p)? {
        b'?' => Some(p + 1),
        b'[' => class_matches(pattern, p + 1, c),
        // A trailing backslash is a literal one, as in Redis.
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
        literal => (literal == c).then_some(p + 1),
    }
}

/// A `[...]` class starting after its `[`. Redis's rules: `^` negates, `a-z` is a range (either
/// way round), `\` escapes, and an unterminated class runs to the end of the pattern.
fn class_matches(pattern: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut i = start;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    let end = loop {
        match pattern.get(i) {
            None => break pattern.len(),
            Some(b'\\') if i + 1 < pattern.len() => {
                hit |= pattern[i + 1] == c;
                i += 2;
            }
            Some(b']') => break i + 1,
            Some(&from) if i + 2 < pattern.len() && pattern[i + 1] == b'-' => {
                let to = pattern[i + 2];
                let (low, high) = if from <= to { (from, to) } else { (to, from) };
                hit |= (low..=high).contains(&c);
                i += 3;
            }
            Some(&member) => {
                hit |= member == c;
                i += 1;
            }
        }
    };
    (hit != negate).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_like_redis() {
        assert!(matches(b"session:*", b"session:42"));
        assert!(!matches(b"session:*", b"rate:1"));
        assert!(matches(b"h?llo", b"hello"));
        assert!(matches(b"h[ae]llo", b"hallo"));
        assert!(!matches(b"h[^e]llo", b"hello"));
        assert!(matches(b"h[a-c]llo", b"hbllo"));
        assert!(matches(b"h[c-a]llo", b"hbllo"), "a range either way round");
        assert!(matches(b"a\\*b", b"a*b"));
        assert!(!matches(b"a\\*b", b"axb"));
        assert!(matches(b"a\\", b"a\\"), "a trailing backslash is literal");
        assert!(matches(b"*", b""));
        assert!(matches(b"", b""));
        assert!(!matches(b"", b"a"));
        assert!(matches(b"a*", b"a"));
        assert!(matches(b"*b*", b"abc"));
        assert!(!matches(b"*b*d", b"abc"));
        assert!(!matches(b"[]", b"]"), "an empty class matches nothing");
        assert!(!matches(b"[]", b"a"));
        assert!(
            matches(b"x[ab", b"xb"),
            "an unterminated class runs to the end"
        );
        assert!(matches(b"[\\]]", b"]"));
    }

    #[test]
    fn backtracks_to_the_last_star_only() {
        let pattern = format!("{}b", "*a".repeat(12));
        let long_a = "a".repeat(60);
        let started = std::time::Instant::now();
        assert!(!matches(pattern.as_bytes(), long_a.as_bytes()));
        assert!(matches(pattern.as_bytes(), format!("{long_a}b").as_bytes()));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn agrees_with_a_plain_recursive_matcher_on_small_cases() {
        fn reference(p: &[u8], t: &[u8]) -> bool {
            match (p.first(), t.first()) {
                (None, None) => true,
                (Some(b'*'), _) => {
                    reference(&p[1..], t) || (!t.is_empty() && reference(p, &t[1..]))
                }
                (Some(b'?'), Some(_)) => reference(&p[1..], &t[1..]),
                (Some(a), Some(b)) if a == b => reference(&p[1..], &t[1..]),
                _ => false,
            }
        }
        let alphabet = [b'a', b'b', b'*', b'?'];
        let mut patterns = vec![Vec::new()];
        for _ in 0..4 {
            patterns = patterns
                .iter()
                .flat_map(|p| {
                    alphabet.iter().map(move |c| {
                        let mut p = p.clone();
                        p.push(*c);
                        p
                    })
                })
                .collect();
            for pattern in &patterns {
                for text in [&b""[..], b"a", b"ab", b"ba", b"aab", b"abab", b"bbb"] {
                    assert_eq!(
                        matches(pattern, text),
                        reference(pattern, text),
                        "{:?} ~ {:?}",
                        String::from_utf8_lossy(pattern),
                        String::from_utf8_lossy(text)
                    );
                }
            }
        }
    }
}
