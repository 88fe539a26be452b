//! The few Python 3 `str` semantics the reference scorers lean on, so the Rust rules agree
//! with them character for character:
//!
//! - whitespace is `str.isspace()`: Rust's `char::is_whitespace` plus U+001C..U+001F (the
//!   information separators, which Python counts as spaces and Unicode's White_Space does
//!   not); [`split`] and [`strip`] are `str.split()` and `str.strip()` on that set;
//! - a digit is what `\d` matches in a Python 3 `str` pattern: Unicode category Nd
//!   ([`is_digit`], table from Python 3.11's `unicodedata`, Unicode 14.0);
//! - lower case is `str::to_lowercase`, which applies the same full case mapping (and final
//!   sigma) as Python's `str.lower()`.
//!
//! Slicing such as `text[:4]` counts characters, never bytes: see [`prefix`].

/// `c.isspace()` in Python 3.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `s.split()` in Python: runs of whitespace separate, empty pieces are dropped.
pub fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|w| !w.is_empty())
}

/// `s.strip()` in Python.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `s[:n]` in Python: the first `n` characters.
pub fn prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether `\d` matches `c` in a Python 3 `str` pattern (Unicode category Nd).
pub fn is_digit(c: char) -> bool {
    let c = c as u32;
    // Ranges are sorted and disjoint: find the last one starting at or before `c`.
    let i = ND.partition_point(|&(start, _)| start <= c);
    i > 0 && c <= ND[i - 1].1
}

/// The code point ranges of category Nd (decimal digits), from Python 3.11's `unicodedata`.
const ND: &[(u32, u32)] = &[
    (0x30, 0x39),
    (0x660, 0x669),
    (0x6F0, 0x6F9),
    (0x7C0, 0x7C9),
    (0x966, 0x96F),
    (0x9E6, 0x9EF),
    (0xA66, 0xA6F),
    (0xAE6, 0xAEF),
    (0xB66, 0xB6F),
    (0xBE6, 0xBEF),
    (0xC66, 0xC6F),
    (0xCE6, 0xCEF),
    (0xD66, 0xD6F),
    (0xDE6, 0xDEF),
    (0xE50, 0xE59),
    (0xED0, 0xED9),
    (0xF20, 0xF29),
    (0x1040, 0x1049),
    (0x1090, 0x1099),
    (0x17E0, 0x17E9),
    (0x1810, 0x1819),
    (0x1946, 0x194F),
    (0x19D0, 0x19D9),
    (0x1A80, 0x1A89),
    (0x1A90, 0x1A99),
    (0x1B50, 0x1B59),
    (0x1BB0, 0x1BB9),
    (0x1C40, 0x1C49),
    (0x1C50, 0x1C59),
    (0xA620, 0xA629),
    (0xA8D0, 0xA8D9),
    (0xA900, 0xA909),
    (0xA9D0, 0xA9D9),
    (0xA9F0, 0xA9F9),
    (0xAA50, 0xAA59),
    (0xABF0, 0xABF9),
    (0xFF10, 0xFF19),
    (0x104A0, 0x104A9),
    (0x10D30, 0x10D39),
    (0x11066, 0x1106F),
    (0x110F0, 0x110F9),
    (0x11136, 0x1113F),
    (0x111D0, 0x111D9),
    (0x112F0, 0x112F9),
    (0x11450, 0x11459),
    (0x114D0, 0x114D9),
    (0x11650, 0x11659),
    (0x116C0, 0x116C9),
    (0x11730, 0x11739),
    (0x118E0, 0x118E9),
    (0x11950, 0x11959),
    (0x11C50, 0x11C59),
    (0x11D50, 0x11D59),
    (0x11DA0, 0x11DA9),
    (0x16A60, 0x16A69),
    (0x16AC0, 0x16AC9),
    (0x16B50, 0x16B59),
    (0x1D7CE, 0x1D7FF),
    (0x1E140, 0x1E149),
    (0x1E2F0, 0x1E2F9),
    (0x1E950, 0x1E959),
    (0x1FBF0, 0x1FBF9),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_pythons() {
        // Python: "a\x1cb\u00a0c  d".split() == ['a', 'b', 'c', 'd']
        let got: Vec<_> = split("a\u{1c}b\u{a0}c  d").collect();
        assert_eq!(got, ["a", "b", "c", "d"]);
        assert_eq!(strip("\u{1f}\t x \u{3000}"), "x");
        // U+200B (zero width space) is not whitespace in Python either.
        assert!(!is_space('\u{200b}'));
    }

    #[test]
    fn digits_are_category_nd() {
        assert!(is_digit('0') && is_digit('9'));
        assert!(is_digit('\u{663}')); // ARABIC-INDIC DIGIT THREE
        assert!(is_digit('\u{ff15}')); // FULLWIDTH DIGIT FIVE
        assert!(is_digit('\u{1d7ff}')); // last of the mathematical digits
        assert!(!is_digit('\u{b2}')); // SUPERSCRIPT TWO is No, not Nd
        assert!(!is_digit('\u{bd}')); // VULGAR FRACTION ONE HALF
        assert!(!is_digit('a') && !is_digit('/') && !is_digit(':'));
    }

    #[test]
    fn prefix_counts_characters() {
        assert_eq!(prefix("yes, there is", 4), "yes,");
        assert_eq!(prefix("né", 4), "né");
        assert_eq!(prefix("ñooo", 2), "ño");
    }
}
