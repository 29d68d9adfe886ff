//! Unicode character classes for the pre-tokenizer and NFC normalization, over the
//! generated range tables in `tables.rs` (binary search, no heap).

use super::TokenizerError;
use super::tables::{CCC_RANGES, CLASS_RANGES, COMPOSITION, DECOMPOSITION, NFC_UNSTABLE};

/// The classes the split regexes distinguish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CharClass {
    /// `\p{L}`.
    Letter,
    /// `\p{N}`.
    Number,
    /// `\s` (the White_Space property).
    Space,
    /// Everything else: punctuation, symbols, marks, controls, emoji.
    Other,
}

fn find_range<T: Copy>(table: &[(u32, u32, T)], cp: u32) -> Option<T> {
    let i = table.partition_point(|r| r.1 < cp);
    match table.get(i) {
        Some(&(lo, _, v)) if lo <= cp => Some(v),
        _ => None,
    }
}

/// The class of `c`.
pub fn class(c: char) -> CharClass {
    // ASCII decides most text without a search.
    if c.is_ascii() {
        return if c.is_ascii_alphabetic() {
            CharClass::Letter
        } else if c.is_ascii_digit() {
            CharClass::Number
        } else if matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r') {
            CharClass::Space
        } else {
            CharClass::Other
        };
    }
    match find_range(&CLASS_RANGES, c as u32) {
        Some(1) => CharClass::Letter,
        Some(2) => CharClass::Number,
        Some(3) => CharClass::Space,
        _ => CharClass::Other,
    }
}

/// Canonical combining class of `cp`.
fn ccc(cp: u32) -> u8 {
    if cp < 0x300 {
        return 0;
    }
    find_range(&CCC_RANGES, cp).unwrap_or(0)
}

fn nfc_unstable(cp: u32) -> bool {
    if cp < 0x300 {
        return false;
    }
    let i = NFC_UNSTABLE.partition_point(|r| r.1 < cp);
    matches!(NFC_UNSTABLE.get(i), Some(&(lo, _)) if lo <= cp)
}

/// Whether NFC leaves `text` unchanged by a quick scan: true unless some character could
/// combine, reorder or decompose. A false answer only means "normalize to find out".
pub fn is_nfc_quick(text: &str) -> bool {
    text.chars().all(|c| !nfc_unstable(c as u32))
}

const S_BASE: u32 = 0xAC00;
const L_BASE: u32 = 0x1100;
const V_BASE: u32 = 0x1161;
const T_BASE: u32 = 0x11A7;
const L_COUNT: u32 = 19;
const V_COUNT: u32 = 21;
const T_COUNT: u32 = 28;
const N_COUNT: u32 = V_COUNT * T_COUNT;
const S_COUNT: u32 = L_COUNT * N_COUNT;

/// Most code points one NFC segment (a starter and the marks that follow it) may
/// decompose to. Longer runs of combining marks than any real script uses are refused
/// rather than cut (UAX #15's stream-safe format caps them at 30 non-starters).
pub const MAX_NFC_SEGMENT: usize = 64;

struct Segment {
    cps: [u32; MAX_NFC_SEGMENT],
    len: usize,
}

impl Segment {
    fn push(&mut self, cp: u32) -> Result<(), TokenizerError> {
        let slot = self
            .cps
            .get_mut(self.len)
            .ok_or(TokenizerError::NormalizationSegmentTooLong)?;
        *slot = cp;
        self.len += 1;
        Ok(())
    }

    /// Append the full canonical decomposition of `cp`.
    fn push_decomposed(&mut self, cp: u32) -> Result<(), TokenizerError> {
        if (S_BASE..S_BASE + S_COUNT).contains(&cp) {
            let s = cp - S_BASE;
            self.push(L_BASE + s / N_COUNT)?;
            self.push(V_BASE + (s % N_COUNT) / T_COUNT)?;
            if !s.is_multiple_of(T_COUNT) {
                self.push(T_BASE + s % T_COUNT)?;
            }
            return Ok(());
        }
        self.push_table_decomposed(cp, 0)
    }

    fn push_table_decomposed(&mut self, cp: u32, depth: u32) -> Result<(), TokenizerError> {
        let i = DECOMPOSITION.partition_point(|d| d.0 < cp);
        match DECOMPOSITION.get(i) {
            // Canonical decompositions nest at most four levels in Unicode 14; the depth
            // cap only guards against a corrupted table.
            Some(&(c, a, b)) if c == cp && depth < 8 => {
                self.push_table_decomposed(a, depth + 1)?;
                if b != 0 {
                    self.push_table_decomposed(b, depth + 1)?;
                }
                Ok(())
            }
            _ => self.push(cp),
        }
    }

    /// Canonical ordering: a stable sort of each run of non-starters by combining class.
    fn reorder(&mut self) {
        let cps = &mut self.cps[..self.len.min(MAX_NFC_SEGMENT)];
        // Insertion sort: runs are short, and stability is what the algorithm requires.
        for i in 1..cps.len() {
            let c = ccc(cps[i]);
            if c == 0 {
                continue;
            }
            let mut j = i;
            while j > 0 {
                let p = ccc(cps[j - 1]);
                if p <= c {
                    break;
                }
                cps.swap(j, j - 1);
                j -= 1;
            }
        }
    }

    /// Canonical composition, in place.
    fn compose(&mut self) {
        let cps = &mut self.cps[..self.len.min(MAX_NFC_SEGMENT)];
        if cps.is_empty() {
            return;
        }
        let mut starter: Option<usize> = if ccc(cps[0]) == 0 { Some(0) } else { None };
        let mut out = 1;
        // Combining class of the last character kept since the starter (0 = none yet
        // or a starter, which blocks).
        let mut last_ccc: i32 = -1;
        for i in 1..cps.len() {
            let c = cps[i];
            let cc = ccc(c);
            if let Some(s) = starter {
                let blocked = last_ccc != -1 && (last_ccc == 0 || last_ccc as u8 >= cc);
                if !blocked && let Some(comp) = compose_pair(cps[s], c) {
                    cps[s] = comp;
                    continue;
                }
            }
            if cc == 0 {
                starter = Some(out);
                last_ccc = -1;
            } else {
                last_ccc = cc as i32;
            }
            cps[out] = c;
            out += 1;
        }
        self.len = out;
    }
}

fn compose_pair(a: u32, b: u32) -> Option<u32> {
    // Hangul LV and LVT syllables.
    if (L_BASE..L_BASE + L_COUNT).contains(&a) && (V_BASE..V_BASE + V_COUNT).contains(&b) {
        return Some(S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT);
    }
    if (S_BASE..S_BASE + S_COUNT).contains(&a)
        && (a - S_BASE).is_multiple_of(T_COUNT)
        && (T_BASE + 1..T_BASE + T_COUNT).contains(&b)
    {
        return Some(a + (b - T_BASE));
    }
    let i = COMPOSITION.partition_point(|p| (p.0, p.1) < (a, b));
    match COMPOSITION.get(i) {
        Some(&(x, y, c)) if x == a && y == b => Some(c),
        _ => None,
    }
}

/// Whether a segment boundary falls before `c`: nothing before it can reorder with it or
/// compose with it.
fn boundary_before(c: char) -> bool {
    !nfc_unstable(c as u32)
}

/// Write the NFC form of `text` into `out`; returns the normalized text. NFC can grow a
/// string (at most threefold in UTF-8 bytes), so `out` should have room for that; a
/// result that does not fit is an error.
pub fn nfc<'o>(text: &str, out: &'o mut [u8]) -> Result<&'o str, TokenizerError> {
    let mut written = 0usize;
    let mut seg = Segment {
        cps: [0; MAX_NFC_SEGMENT],
        len: 0,
    };
    let mut flush = |seg: &mut Segment, written: &mut usize| -> Result<(), TokenizerError> {
        seg.reorder();
        seg.compose();
        for &cp in seg.cps.get(..seg.len).unwrap_or(&[]) {
            let c = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
            let mut buf = [0u8; 4];
            let s = c.encode_utf8(&mut buf);
            let dst = out
                .get_mut(*written..*written + s.len())
                .ok_or(TokenizerError::TextBufferTooSmall)?;
            dst.copy_from_slice(s.as_bytes());
            *written += s.len();
        }
        seg.len = 0;
        Ok(())
    };
    for c in text.chars() {
        if boundary_before(c) && seg.len > 0 {
            flush(&mut seg, &mut written)?;
        }
        seg.push_decomposed(c as u32)?;
    }
    flush(&mut seg, &mut written)?;
    let bytes = out.get(..written).unwrap_or(&[]);
    core::str::from_utf8(bytes).map_err(|_| TokenizerError::TextBufferTooSmall)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> std::string::String {
        let mut buf = [0u8; 256];
        std::string::String::from(nfc(s, &mut buf).unwrap())
    }

    #[test]
    fn classes() {
        assert_eq!(class('a'), CharClass::Letter);
        assert_eq!(class('é'), CharClass::Letter);
        assert_eq!(class('中'), CharClass::Letter);
        assert_eq!(class('٣'), CharClass::Number);
        assert_eq!(class('½'), CharClass::Number);
        assert_eq!(class('\u{3000}'), CharClass::Space);
        assert_eq!(class('\u{a0}'), CharClass::Space);
        assert_eq!(class('\u{200b}'), CharClass::Other);
        assert_eq!(class('😀'), CharClass::Other);
        assert_eq!(class('\u{301}'), CharClass::Other);
    }

    #[test]
    fn nfc_composes_reorders_and_maps_singletons() {
        assert_eq!(norm("e\u{301}"), "é");
        assert_eq!(norm("A\u{30a}"), "Å");
        // Dot below (ccc 220) sorts before dot above (ccc 230), then both compose.
        assert_eq!(norm("s\u{307}\u{323}"), "\u{1e69}");
        assert_eq!(norm("\u{2126}"), "\u{3a9}");
        assert_eq!(norm("\u{1100}\u{1161}\u{11a8}"), "각");
        assert_eq!(norm("각"), "각");
        assert_eq!(norm("\u{f900}"), "\u{8c48}");
        // U+0344 decomposes to two marks and never recomposes.
        assert_eq!(norm("\u{344}"), "\u{308}\u{301}");
        assert!(is_nfc_quick("plain ascii and é and 中文"));
        assert!(!is_nfc_quick("e\u{301}"));
    }

    #[test]
    fn nfc_refuses_what_does_not_fit() {
        let mut small = [0u8; 2];
        assert_eq!(
            nfc("abc", &mut small),
            Err(TokenizerError::TextBufferTooSmall)
        );
        let zalgo: std::string::String = core::iter::once('a')
            .chain(core::iter::repeat_n('\u{301}', 100))
            .collect();
        let mut buf = [0u8; 1024];
        assert_eq!(
            nfc(&zalgo, &mut buf),
            Err(TokenizerError::NormalizationSegmentTooLong)
        );
    }

    #[test]
    fn nfc_is_idempotent_and_quick_check_is_sound() {
        const ALPHABET: &[char] = &[
            'a', 'e', 'A', 'o', 's', 'é', '\u{301}', '\u{300}', '\u{308}', '\u{323}', '\u{307}',
            '\u{345}', '\u{344}', '\u{1100}', '\u{1161}', '\u{11a8}', '각', '\u{2126}', '\u{f900}',
            '\u{915}', '\u{93c}', ' ', '中',
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let len = (next() % 12) as usize;
            let s: std::string::String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let once = norm(&s);
            assert_eq!(norm(&once), once, "{s:?}");
            if is_nfc_quick(&s) {
                assert_eq!(once, s);
            }
        }
    }
}
