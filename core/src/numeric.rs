//! PostgreSQL `numeric` values: from their stored form to the text `numeric_out` prints.
//!
//! driftdb records a numeric by its text (`Value::Numeric`, decision record D7). Asking the
//! server's `numeric_out` for it costs a function call, a palloc and a strlen per value, which
//! a bulk load's commit pays a million times; `numeric_text` reads the stored digits instead
//! and prints exactly what `numeric_out` prints (the extension's tests compare the two over
//! many values).
//!
//! The stored form (PostgreSQL's `numeric.c`, `NumericData`; on disk since 8.3, the special
//! values since 14), after the varlena header, in the server's byte order:
//!
//! ```text
//! u16 header: top two bits 10 = short form, 11 = special, 00 = positive, 01 = negative (long)
//!   special: 0xC000 NaN, 0xD000 +Infinity, 0xF000 -Infinity (top four bits)
//!   short:   0x2000 sign, 0x1F80 display scale (>> 7), 0x0040 weight sign, 0x003F weight
//!   long:    0x3FFF display scale; an i16 weight follows
//! i16 digits[]: base 10000, most significant first; digit i is worth 10000^(weight - i)
//! ```
//!
//! Digits beyond the stored ones are zero; the display scale says how many decimal digits
//! follow the point.

/// The text of a numeric whose varlena payload (without the varlena header) is `body`, or
/// `None` if `body` is not a well-formed numeric (the caller then asks the server).
pub fn numeric_text(body: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    // the text is ASCII: digits, '-', '.', or one of the special values' names
    write_numeric_text(body, &mut out).then(|| String::from_utf8(out).expect("numeric text is ASCII"))
}

/// Append the text `numeric_text` makes of `body` to `out` (ASCII), without allocating
/// anything else; false, with `out` as it was, if `body` is not a well-formed numeric. A bulk
/// load's commit prints every numeric it records this way, into one reused buffer.
pub fn write_numeric_text(body: &[u8], out: &mut Vec<u8>) -> bool {
    let word = |i: usize| body.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let Some(header) = word(0) else { return false };
    let (negative, dscale, weight, start) = match header & 0xC000 {
        0xC000 => {
            let name: &[u8] = match header & 0xF000 {
                0xC000 => b"NaN",
                0xD000 => b"Infinity",
                0xF000 => b"-Infinity",
                _ => return false,
            };
            out.extend_from_slice(name);
            return true;
        }
        0x8000 => {
            let weight = if header & 0x0040 != 0 { (!0x003Fu16 | (header & 0x003F)) as i16 } else { (header & 0x003F) as i16 };
            (header & 0x2000 != 0, ((header & 0x1F80) >> 7) as usize, weight as i32, 2)
        }
        sign => match word(2) {
            Some(w) => (sign == 0x4000, (header & 0x3FFF) as usize, w as i16 as i32, 4),
            None => return false,
        },
    };
    let rest = &body[start..];
    if rest.len() % 2 != 0 {
        return false;
    }
    let ndigits = rest.len() / 2;
    let stored = |i: usize| u16::from_ne_bytes([rest[2 * i], rest[2 * i + 1]]);
    if (0..ndigits).any(|i| stored(i) > 9999) {
        return false;
    }
    let digit = |i: i32| if i >= 0 && (i as usize) < ndigits { stored(i as usize) } else { 0 };
    let decimals = |v: u16| [v / 1000, v / 100 % 10, v / 10 % 10, v % 10].map(|x| b'0' + x as u8);

    out.reserve(((weight + 1).max(1) * 4) as usize + dscale + 2);
    if negative {
        out.push(b'-');
    }
    // the integer part: digits 0..=weight, the first without its leading zeroes
    let mut d = 0;
    if weight < 0 {
        d = weight + 1;
        out.push(b'0');
    } else {
        while d <= weight {
            let text = decimals(digit(d));
            let skip = if d == 0 { text.iter().take(3).take_while(|&&x| x == b'0').count() } else { 0 };
            out.extend_from_slice(&text[skip..]);
            d += 1;
        }
    }
    // the fraction: dscale decimal digits, from digit weight + 1 on (the last base-10000
    // digit cut to what the scale leaves)
    if dscale > 0 {
        out.push(b'.');
        let mut left = dscale;
        while left > 0 {
            let text = decimals(digit(d));
            let n = left.min(4);
            out.extend_from_slice(&text[..n]);
            left -= n;
            d += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::{numeric_text, write_numeric_text};

    fn long(negative: bool, dscale: u16, weight: i16, digits: &[u16]) -> Vec<u8> {
        let mut b = ((if negative { 0x4000 } else { 0 }) | dscale).to_ne_bytes().to_vec();
        b.extend(weight.to_ne_bytes());
        digits.iter().for_each(|d| b.extend(d.to_ne_bytes()));
        b
    }

    fn short(negative: bool, dscale: u16, weight: i16, digits: &[u16]) -> Vec<u8> {
        let w = if weight < 0 { 0x0040 | (weight as u16 & 0x003F) } else { weight as u16 };
        let mut b = (0x8000 | if negative { 0x2000 } else { 0 } | (dscale << 7) | w).to_ne_bytes().to_vec();
        digits.iter().for_each(|d| b.extend(d.to_ne_bytes()));
        b
    }

    #[test]
    fn prints_as_numeric_out() {
        for form in [short, long] {
            let t = |neg, dscale, weight, digits: &[u16]| numeric_text(&form(neg, dscale, weight, digits)).unwrap();
            assert_eq!(t(false, 0, 0, &[]), "0"); // zero: no digits
            assert_eq!(t(false, 2, 0, &[]), "0.00");
            assert_eq!(t(false, 4, 0, &[12, 3400]), "12.3400");
            assert_eq!(t(true, 2, 0, &[12, 3400]), "-12.34");
            assert_eq!(t(false, 0, 1, &[1]), "10000"); // trailing zero digits are not stored
            assert_eq!(t(false, 0, 1, &[1, 5]), "10005");
            assert_eq!(t(false, 3, -1, &[5]), "0.000"); // the scale cuts digits off
            assert_eq!(t(false, 5, -1, &[5]), "0.00050");
            assert_eq!(t(false, 9, -2, &[12]), "0.000000120");
            assert_eq!(t(true, 6, -1, &[1234, 5678]), "-0.123456");
            assert_eq!(t(false, 1, 2, &[9999, 9999, 9999, 9000]), "999999999999.9");
        }
    }

    #[test]
    fn specials_and_malformed() {
        assert_eq!(numeric_text(&0xC000u16.to_ne_bytes()).unwrap(), "NaN");
        assert_eq!(numeric_text(&0xD000u16.to_ne_bytes()).unwrap(), "Infinity");
        assert_eq!(numeric_text(&0xF000u16.to_ne_bytes()).unwrap(), "-Infinity");
        assert_eq!(numeric_text(&0xE000u16.to_ne_bytes()), None);
        assert_eq!(numeric_text(&[]), None);
        assert_eq!(numeric_text(&[0, 0, 0]), None); // long form without its weight
        assert_eq!(numeric_text(&long(false, 0, 0, &[10000])), None); // not a base-10000 digit
        let mut odd = long(false, 0, 0, &[1]);
        odd.push(0);
        assert_eq!(numeric_text(&odd), None);
    }

    #[test]
    fn writes_after_what_the_buffer_holds_and_leaves_it_alone_when_malformed() {
        let mut out = b"x".to_vec();
        assert!(write_numeric_text(&long(true, 6, -1, &[1234, 5678]), &mut out));
        assert!(write_numeric_text(&0xD000u16.to_ne_bytes(), &mut out));
        assert_eq!(out, b"x-0.123456Infinity");
        for bad in [&long(false, 0, 0, &[10000])[..], &[0, 0, 0], &0xE000u16.to_ne_bytes()] {
            assert!(!write_numeric_text(bad, &mut out));
            assert_eq!(out, b"x-0.123456Infinity");
        }
    }
}
