//! Decimal numbers written straight into an output buffer, without `format!`:
//! the BDAT chunk reply on the server's hot path and the per-message sequence
//! numbers of smtpload's payloads use the same few lines.

/// Appends `n` in decimal, zero-padded on the left to at least `width` digits.
pub fn write(n: u64, width: usize, out: &mut Vec<u8>) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            // `v % 10` is a single digit: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            let digit = (v % 10) as u8;
            *d = b'0' + digit;
        }
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(len)));
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_decimals() {
        for (n, width, want) in [
            (0u64, 0, "0"),
            (7, 0, "7"),
            (123, 5, "00123"),
            (1_048_576, 0, "1048576"),
            (u64::MAX, 0, "18446744073709551615"),
            (u64::MAX, 20, "18446744073709551615"),
            (42, 25, "0000000000000000000000042"),
        ] {
            let mut out = b"x".to_vec();
            write(n, width, &mut out);
            assert_eq!(out, format!("x{want}").as_bytes(), "{n} width {width}");
        }
    }
}
