//! Pre-tokenization: the split regexes of GPT-2, Qwen2 and SmolLM written out as
//! hand-made matchers, so the device needs no regex engine.
//!
//! Each matcher returns the end of the match that the regex (leftmost alternative first,
//! greedy, with backtracking) would find at a position. The alternatives always cover
//! every character, so splitting leaves no gaps.
//!
//! - GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! - Qwen2: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
//!   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! - SmolLM (llama.cpp `LLAMA_VOCAB_PRE_TYPE_SMOLLM`, HF `Digits(individual_digits)` then
//!   `ByteLevel`): every `\p{N}` character alone, then GPT-2's pattern on the text between.

use glimpse_quant::schema::PreTokenizer;

use super::unicode::{CharClass, class};

/// The character starting at byte `at` of `s`, with its length.
fn char_at(s: &str, at: usize) -> Option<(char, usize)> {
    let c = s.get(at..)?.chars().next()?;
    Some((c, c.len_utf8()))
}

fn class_at(s: &str, at: usize) -> Option<CharClass> {
    char_at(s, at).map(|(c, _)| class(c))
}

/// End of the run of characters from `at` for which `f` holds.
fn run(s: &str, mut at: usize, f: impl Fn(char) -> bool) -> usize {
    while let Some((c, n)) = char_at(s, at) {
        if !f(c) {
            break;
        }
        at += n;
    }
    at
}

/// `'s|'t|'re|'ve|'m|'ll|'d` at `at` (which holds the apostrophe); the match end.
fn contraction(s: &str, at: usize, fold_case: bool) -> Option<usize> {
    let norm = |c: char| {
        if !fold_case {
            return c;
        }
        // Case folding maps U+017F LATIN SMALL LETTER LONG S to 's' too.
        if c == '\u{17f}' {
            's'
        } else {
            c.to_ascii_lowercase()
        }
    };
    let (c1, n1) = char_at(s, at + 1)?;
    let c1 = norm(c1);
    let after1 = at + 1 + n1;
    if matches!(c1, 's' | 't' | 'm' | 'd') {
        return Some(after1);
    }
    let (c2, n2) = char_at(s, after1)?;
    let c2 = norm(c2);
    match (c1, c2) {
        ('r', 'e') | ('v', 'e') | ('l', 'l') => Some(after1 + n2),
        _ => None,
    }
}

fn is_other(c: char) -> bool {
    class(c) == CharClass::Other
}

/// `\s+(?!\S)|\s+` at `at`, which holds whitespace.
fn trailing_space(s: &str, at: usize) -> usize {
    let mut end = at;
    let mut last = at;
    let mut count = 0usize;
    while let Some((c, n)) = char_at(s, end) {
        if class(c) != CharClass::Space {
            break;
        }
        last = end;
        end += n;
        count += 1;
    }
    // Followed by a non-space: the lookahead forces the run to give back its last
    // character, unless that would leave it empty (then plain `\s+` takes the one).
    if end < s.len() && count > 1 {
        last
    } else {
        end
    }
}

/// One GPT-2 match at `at` (< `s.len()`).
fn gpt2(s: &str, at: usize) -> usize {
    let Some((c, n)) = char_at(s, at) else {
        return s.len();
    };
    if c == '\''
        && let Some(end) = contraction(s, at, false)
    {
        return end;
    }
    let (start, cls) = if c == ' ' {
        match class_at(s, at + n) {
            Some(k) if k != CharClass::Space => (at + n, k),
            _ => (at, CharClass::Space),
        }
    } else {
        (at, class(c))
    };
    match cls {
        CharClass::Letter => run(s, start, |c| class(c) == CharClass::Letter),
        CharClass::Number => run(s, start, |c| class(c) == CharClass::Number),
        CharClass::Other => run(s, start, is_other),
        CharClass::Space => trailing_space(s, at),
    }
}

/// One Qwen2 match at `at` (< `s.len()`).
fn qwen2(s: &str, at: usize) -> usize {
    let Some((c, n)) = char_at(s, at) else {
        return s.len();
    };
    if c == '\''
        && let Some(end) = contraction(s, at, true)
    {
        return end;
    }
    let cls = class(c);
    let letters = |from| run(s, from, |c| class(c) == CharClass::Letter);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if cls == CharClass::Letter {
        return letters(at);
    }
    let next = class_at(s, at + n);
    if cls != CharClass::Number && c != '\r' && c != '\n' && next == Some(CharClass::Letter) {
        return letters(at + n);
    }
    // \p{N}
    if cls == CharClass::Number {
        return at + n;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    let other_from = if cls == CharClass::Other {
        Some(at)
    } else if c == ' ' && next == Some(CharClass::Other) {
        Some(at + n)
    } else {
        None
    };
    if let Some(from) = other_from {
        let end = run(s, from, is_other);
        return run(s, end, |c| c == '\r' || c == '\n');
    }
    // \s*[\r\n]+ : greedy whitespace backs off to end just after the run's last newline.
    let ws_end = run(s, at, |c| class(c) == CharClass::Space);
    let mut last_nl = None;
    let mut p = at;
    while let Some((c, n)) = char_at(s, p) {
        if p >= ws_end {
            break;
        }
        if c == '\r' || c == '\n' {
            last_nl = Some(p + n);
        }
        p += n;
    }
    if let Some(end) = last_nl {
        return end;
    }
    trailing_space(s, at)
}

/// Iterator over the pieces of a text (which must hold no special tokens: those are
/// split out before).
#[derive(Debug, Clone)]
pub struct Pieces<'t> {
    text: &'t str,
    pos: usize,
    rule: PreTokenizer,
}

impl<'t> Pieces<'t> {
    /// Split `text` with `rule`.
    pub fn new(text: &'t str, rule: PreTokenizer) -> Self {
        Self { text, pos: 0, rule }
    }
}

impl<'t> Iterator for Pieces<'t> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        let s = self.text;
        let at = self.pos;
        let (c, n) = char_at(s, at)?;
        let end = match self.rule {
            PreTokenizer::Gpt2 => gpt2(s, at),
            PreTokenizer::Qwen2 => qwen2(s, at),
            PreTokenizer::SmolLm => {
                if class(c) == CharClass::Number {
                    at + n
                } else {
                    // The GPT-2 pattern sees only the text up to the next digit: its
                    // lookahead must not cross the digit split.
                    let seg_end = run(s, at, |c| class(c) != CharClass::Number);
                    let seg = s.get(..seg_end).unwrap_or(s);
                    gpt2(seg, at)
                }
            }
        };
        // Every alternative consumes at least one character; guard anyway so a bug can
        // never loop forever.
        let end = end.max(at + n).min(s.len());
        self.pos = end;
        s.get(at..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn split(s: &str, rule: PreTokenizer) -> Vec<&str> {
        Pieces::new(s, rule).collect()
    }

    #[test]
    fn gpt2_pieces() {
        let r = PreTokenizer::Gpt2;
        assert_eq!(
            split("Hello world's  end!!  \n\tx 123", r),
            [
                "Hello", " world", "'s", " ", " end", "!!", "  \n", "\t", "x", " 123"
            ]
        );
        assert_eq!(split("a   ", r), ["a", "   "]);
        assert_eq!(split("I'M", r), ["I", "'", "M"]);
    }

    #[test]
    fn qwen2_pieces() {
        let r = PreTokenizer::Qwen2;
        assert_eq!(
            split("Hello world's 123 I'M \"quoted\"!\n\n  x\t\tfoo  ", r),
            [
                "Hello", " world", "'s", " ", "1", "2", "3", " I", "'M", " \"", "quoted",
                "\"!\n\n", " ", " x", "\t", "\tfoo", "  "
            ]
        );
        assert_eq!(split("a \n \n b", r), ["a", " \n \n", " b"]);
    }

    #[test]
    fn smollm_pieces() {
        let r = PreTokenizer::SmolLm;
        assert_eq!(
            split("abc123 x  4", r),
            ["abc", "1", "2", "3", " x", "  ", "4"]
        );
    }

    /// Deterministic strings over an alphabet that hits every branch of the matchers.
    fn random_strings() -> impl Iterator<Item = std::string::String> {
        const ALPHABET: &[char] = &[
            'a', 'Z', 'é', '中', '1', '٣', ' ', ' ', '\t', '\n', '\r', '\u{a0}', '\'', 's', 'S',
            'l', 'v', 'e', '!', '"', '😀', '\u{301}', '\u{200d}', '\u{17f}',
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..2000).map(move |_| {
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let len = (next() % 24) as usize;
            (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect()
        })
    }

    #[test]
    fn pieces_cover_the_text_exactly() {
        for s in random_strings() {
            for rule in [
                PreTokenizer::Gpt2,
                PreTokenizer::Qwen2,
                PreTokenizer::SmolLm,
            ] {
                let pieces = split(&s, rule);
                assert!(pieces.iter().all(|p| !p.is_empty()), "{s:?} {rule:?}");
                assert_eq!(pieces.concat(), s, "{rule:?}");
                if rule == PreTokenizer::SmolLm {
                    // Digits always stand alone.
                    for p in &pieces {
                        let n = p.chars().filter(|&c| class(c) == CharClass::Number).count();
                        assert!(n == 0 || p.chars().count() == 1, "{p:?} in {s:?}");
                    }
                }
            }
        }
    }
}
