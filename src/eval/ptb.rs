//! PTB-style caption tokenization, standing in for pycocoevalcap's `PTBTokenizer`.
//!
//! pycocoevalcap pipes captions through Stanford CoreNLP 3.4.1's `PTBTokenizer`
//! (`-preserveLines -lowerCase`) and then drops every token in its punctuation list
//! (`'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;`). That needs Java, so this is a
//! rule-based equivalent of the output it produces on captions:
//!
//! - lower case; newlines become spaces; tokens are joined by single spaces;
//! - quotes, brackets and the listed punctuation are split off words and dropped;
//! - clitics are split off like PTB does (`don't` -> `do n't`, `man's` -> `man 's`,
//!   `they're` -> `they 're`, also `'ve 'll 'd 'm`); a trailing possessive `'` is dropped;
//! - `$` and `#` in front of a word and `%` after it become their own tokens (PTB keeps
//!   them, they are not in the drop list);
//! - commas and colons between digits (`1,000`, `12:30`), hyphens, slashes and periods
//!   inside a word (`black-and-white`, `u.s.`) stay inside the word, as in PTB.
//!
//! Known differences from CoreNLP (rare in captions): its abbreviation list (CoreNLP keeps
//! the final period of `mr.`/`st.`, which we strip), special splits such as `cannot` ->
//! `can not` and `gonna` -> `gon na` (we keep the word), `&`-entities, emoticons and URLs,
//! and Unicode normalisation (CoreNLP maps some quotes and dashes to ASCII first; we drop
//! the common Unicode quotes and dashes as punctuation too).
//! The metrics themselves ([`super::captions::score`]) are exact on pre-tokenized text.

/// Characters that are never part of a kept token when they sit at a word's edge.
fn is_edge_punct(c: char) -> bool {
    matches!(
        c,
        '.' | ','
            | '!'
            | '?'
            | ';'
            | ':'
            | '"'
            | '\''
            | '`'
            | '('
            | ')'
            | '['
            | ']'
            | '{'
            | '}'
            | '-'
            | '\u{2018}'
            | '\u{2019}'
            | '\u{201c}'
            | '\u{201d}'
            | '\u{2013}'
            | '\u{2014}'
            | '\u{2026}'
    )
}

/// Clitics PTB splits off the end of a word (after lower-casing).
const CLITICS: [&str; 7] = ["n't", "'s", "'re", "'ve", "'ll", "'d", "'m"];

/// One caption, PTB-tokenized and punctuation-free, as pycocoevalcap would score it.
pub fn tokenize(caption: &str) -> String {
    let lower = caption.to_lowercase().replace('\u{2019}', "'");
    let mut out: Vec<String> = Vec::new();
    for chunk in lower.split_whitespace() {
        for piece in split_inner(chunk) {
            word_tokens(piece, &mut out);
        }
    }
    out.join(" ")
}

/// Splits a whitespace chunk where PTB would split inside it: at `,` `;` `!` `?` `"` and
/// brackets, and at `:` unless between digits (so `1,000` and `12:30` survive).
fn split_inner(chunk: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = chunk.char_indices().collect();
    let mut pieces = Vec::new();
    let mut start = 0;
    for (k, &(i, c)) in chars.iter().enumerate() {
        let digit = |j: Option<&(usize, char)>| j.is_some_and(|&(_, d)| d.is_ascii_digit());
        let between_digits = k > 0 && digit(chars.get(k - 1)) && digit(chars.get(k + 1));
        let splits = match c {
            ',' | ':' => !between_digits,
            ';' | '!' | '?' | '"' | '(' | ')' | '[' | ']' | '{' | '}' => true,
            _ => false,
        };
        if splits {
            if start < i {
                pieces.push(&chunk[start..i]);
            }
            start = i + c.len_utf8();
        }
    }
    if start < chunk.len() {
        pieces.push(&chunk[start..]);
    }
    pieces
}

/// Tokens of one piece without inner separators: edge punctuation stripped, clitics and
/// currency/percent signs split off.
fn word_tokens(piece: &str, out: &mut Vec<String>) {
    let mut w = piece.trim_start_matches(is_edge_punct);
    let mut prefix = Vec::new();
    while let Some(rest) = w.strip_prefix(['$', '#']) {
        prefix.push(w[..1].to_string());
        w = rest.trim_start_matches(is_edge_punct);
    }
    out.extend(prefix);
    // Trailing punctuation, but keep the final period of a dotted abbreviation (`u.s.`).
    let trimmed = w.trim_end_matches(is_edge_punct);
    let w = if w.len() > trimmed.len()
        && w[trimmed.len()..].starts_with('.')
        && trimmed.contains('.')
    {
        &w[..trimmed.len() + 1]
    } else {
        trimmed
    };
    let (w, percent) = match w.strip_suffix('%') {
        Some(rest) => (rest, true),
        None => (w, false),
    };
    let mut suffix = None;
    let mut stem = w;
    for c in CLITICS {
        if let Some(s) = w.strip_suffix(c) {
            if !s.is_empty() && s.chars().last().is_some_and(char::is_alphanumeric) {
                stem = s;
                suffix = Some(c);
                break;
            }
        }
    }
    if !stem.is_empty() {
        out.push(stem.to_string());
    }
    if let Some(c) = suffix {
        out.push(c.to_string());
    }
    if percent {
        out.push("%".into());
    }
}

#[cfg(test)]
mod tests {
    use super::tokenize;

    #[test]
    fn matches_ptb_output_on_typical_captions() {
        let cases = [
            (
                "A man riding a wave on top of a surfboard.",
                "a man riding a wave on top of a surfboard",
            ),
            (
                "Two dogs, one black-and-white, play!",
                "two dogs one black-and-white play",
            ),
            ("The man's hat isn't red.", "the man 's hat is n't red"),
            ("A \"big\" cat (orange) sits...", "a big cat orange sits"),
            (
                "It costs $5, about 50% off at 12:30",
                "it costs $ 5 about 50 % off at 12:30",
            ),
            ("1,000 birds in the U.S.", "1,000 birds in the u.s."),
            ("  Line one\nline - two  ", "line one line two"),
            ("the dogs' bowls", "the dogs bowls"),
            ("", ""),
            ("...", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(tokenize(raw), want, "{raw:?}");
        }
    }
}
