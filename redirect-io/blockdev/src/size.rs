//! Sizes as users type them: 4096, 64M, 2G, 1T (binary units), for LUNs, disks and
//! memory alike (mkfs.csvfs, csvctl and vmm take them).

/// A size that could not be read, with what to type instead.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error("cannot read size {0:?}: give a number with K, M, G or T")]
    NotASize(String),
    #[error("size {0:?} is too large")]
    TooLarge(String),
}

/// Parses a size with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let Ok(n) = digits.parse::<u64>() else {
        return Err(SizeError::NotASize(s.to_string()));
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::TooLarge(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
