//! Normalisation: what a title and a phrase are compared as. Case folded,
//! accents removed (NFKD), common letter substitutions undone, and
//! everything that is not a letter or digit one space.

/// Letter substitutions undone before matching. Symbols count as letters
/// only inside a word (`@ss`, `k!ll`), never at its end (`hello!`).
fn unleet(c: char, next_is_word: bool) -> char {
    match c {
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' => 'a',
        '5' => 's',
        '7' => 't',
        '8' => 'b',
        '@' if next_is_word => 'a',
        '$' if next_is_word => 's',
        '!' | '|' if next_is_word => 'i',
        other => other,
    }
}

/// `ASCII[byte]`: the byte as matched (lower case, substitutions undone),
/// `SEPARATOR`, or `SYMBOL` (a letter only when a letter or digit follows).
const ASCII: [u8; 128] = ascii_table();
const SEPARATOR: u8 = 0;
const SYMBOL: u8 = 1;

const fn ascii_table() -> [u8; 128] {
    let mut table = [SEPARATOR; 128];
    let mut byte = 0;
    while byte < 128 {
        let c = byte as u8;
        table[byte] = match c {
            b'0' => b'o',
            b'1' => b'i',
            b'3' => b'e',
            b'4' => b'a',
            b'5' => b's',
            b'7' => b't',
            b'8' => b'b',
            b'a'..=b'z' | b'2' | b'6' | b'9' => c,
            b'A'..=b'Z' => c.to_ascii_lowercase(),
            b'@' | b'$' | b'!' | b'|' => SYMBOL,
            _ => SEPARATOR,
        };
        byte += 1;
    }
    table
}

/// Normalises `text` into `out` as " word word " (leading and trailing
/// space, single spaces), lower case, without accents or substitutions.
/// ASCII bytes take a fast path even in titles with other characters
/// (most browser titles end in an em dash and the browser's name).
pub fn normalise(text: &str, out: &mut String) {
    use unicode_normalization::char::{decompose_compatible, is_combining_mark};
    out.clear();
    out.push(' ');
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte.is_ascii() {
            let mapped = match ASCII[usize::from(byte)] {
                SYMBOL if next_is_word(text, i + 1) => unleet(byte as char, true) as u8,
                SYMBOL => SEPARATOR,
                mapped => mapped,
            };
            if mapped != SEPARATOR {
                out.push(char::from(mapped));
            } else if !out.ends_with(' ') {
                out.push(' ');
            }
            i += 1;
            continue;
        }
        // `i` is at a character boundary: only whole characters are skipped.
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        i += c.len_utf8();
        let next_is_word = next_is_word(text, i);
        // Compatibility decomposition without the accents.
        decompose_compatible(c, |d| {
            if !is_combining_mark(d) {
                push_normalised(unleet(d, next_is_word), out);
            }
        });
    }
    if !out.ends_with(' ') {
        out.push(' ');
    }
}

/// Whether the character starting at byte `at` is a letter or digit.
#[inline(always)]
fn next_is_word(text: &str, at: usize) -> bool {
    match text.as_bytes().get(at) {
        None => false,
        Some(b) if b.is_ascii() => b.is_ascii_alphanumeric(),
        Some(_) => text[at..].chars().next().is_some_and(char::is_alphanumeric),
    }
}

/// Letters and digits lower-cased; anything else one space.
#[inline(always)]
fn push_normalised(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() {
        out.push(c.to_ascii_lowercase());
    } else if !c.is_ascii() && c.is_alphanumeric() {
        out.extend(c.to_lowercase());
    } else if !out.ends_with(' ') {
        out.push(' ');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_forms() {
        let mut out = String::new();
        normalise("  Héllo,   W0rld!! ", &mut out);
        assert_eq!(out, " hello world ");
        normalise("k!ll @ss $ex", &mut out);
        assert_eq!(out, " kill ass sex ");
        normalise("", &mut out);
        assert_eq!(out, " ");
        normalise("K1LL mysélf — Mozilla Firefox", &mut out);
        assert_eq!(out, " kill myself mozilla firefox ");
        normalise("naïve—CAFÉ k@é", &mut out);
        assert_eq!(out, " naive cafe kae ");
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(512))]

        /// Any text normalises to " word word ": one leading and trailing
        /// space, never two in a row, no upper-case ASCII; and normalising
        /// the result changes nothing.
        #[test]
        fn any_text_normalises_to_single_spaced_words(text in proptest::arbitrary::any::<String>()) {
            let mut out = String::new();
            normalise(&text, &mut out);
            proptest::prop_assert!(out.starts_with(' ') && out.ends_with(' '), "{:?}", out);
            proptest::prop_assert!(!out.contains("  "), "{:?}", out);
            proptest::prop_assert!(!out.bytes().any(|b| b.is_ascii_uppercase()), "{:?}", out);
            let mut again = String::new();
            normalise(&out, &mut again);
            proptest::prop_assert_eq!(&again, &out);
        }
    }
}
