//! Byte-level BPE on one piece: start from one token per byte, then repeatedly apply the
//! lowest-ranked merge among adjacent pairs (leftmost on ties), as HF tokenizers,
//! llama.cpp and tiktoken all do.

use super::TokenizerError;

/// `tokenizer.merges`: rows `(left, right, rank, merged)` sorted by `(left, right)`.
#[derive(Clone, Copy, Debug)]
pub struct Merges<'a> {
    rows: &'a [u32],
}

/// A pair with no merge.
const NO_MERGE: u32 = u32::MAX;

impl<'a> Merges<'a> {
    /// Wrap a flat `[n * 4]` table.
    pub fn new(rows: &'a [u32]) -> Result<Self, TokenizerError> {
        if !rows.len().is_multiple_of(4) {
            return Err(TokenizerError::BadTable {
                table: "tokenizer.merges",
            });
        }
        Ok(Self { rows })
    }

    /// Number of merges.
    pub fn len(&self) -> usize {
        self.rows.len() / 4
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn row(&self, i: usize) -> Option<&'a [u32]> {
        self.rows.get(i * 4..i * 4 + 4)
    }

    /// `(rank, merged)` of the pair `(left, right)`.
    pub fn find(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = self.row(mid)?;
            match (r.first()?, r.get(1)?).cmp(&(&left, &right)) {
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Greater => hi = mid,
                core::cmp::Ordering::Equal => return Some((*r.get(2)?, *r.get(3)?)),
            }
        }
        None
    }

    /// Whether rows are sorted strictly by `(left, right)` (checked once at load).
    pub fn is_sorted(&self) -> bool {
        let mut prev: Option<(u32, u32)> = None;
        for i in 0..self.len() {
            let Some(r) = self.row(i) else { return false };
            let key = (r.first().copied(), r.get(1).copied());
            let (Some(a), Some(b)) = key else {
                return false;
            };
            if prev.is_some_and(|p| p >= (a, b)) {
                return false;
            }
            prev = Some((a, b));
        }
        true
    }
}

/// Merge `tokens[..n]` in place (one initial token per byte of the piece), with
/// `ranks[..n]` as working space; returns the number of tokens left.
///
/// `ranks[i]` caches the rank of the pair `(tokens[i], tokens[i + 1])`, so each step is a
/// scan for the minimum and a shift: O(n^2) for a piece of n bytes, which is cheap for
/// the words, numbers and whitespace runs pre-tokenization produces.
pub fn merge(merges: &Merges<'_>, tokens: &mut [u32], ranks: &mut [u32]) -> usize {
    let n = tokens.len().min(ranks.len());
    let tokens = &mut tokens[..n];
    let ranks = &mut ranks[..n];
    let mut len = n;
    let pair_rank = |t: &[u32], i: usize| -> (u32, u32) {
        match (t.get(i), t.get(i + 1)) {
            (Some(&l), Some(&r)) => merges.find(l, r).unwrap_or((NO_MERGE, 0)),
            _ => (NO_MERGE, 0),
        }
    };
    for (i, r) in ranks.iter_mut().enumerate() {
        *r = pair_rank(tokens, i).0;
    }
    loop {
        let mut best = NO_MERGE;
        let mut at = 0usize;
        for (i, &r) in ranks[..len.saturating_sub(1)].iter().enumerate() {
            if r < best {
                best = r;
                at = i;
            }
        }
        if best == NO_MERGE {
            return len;
        }
        let (_, merged) = pair_rank(tokens, at);
        tokens[at] = merged;
        tokens.copy_within(at + 2..len, at + 1);
        ranks.copy_within(at + 2..len, at + 1);
        len -= 1;
        ranks[at] = pair_rank(&tokens[..len], at).0;
        if at > 0 {
            ranks[at - 1] = pair_rank(&tokens[..len], at - 1).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_rank_first_then_leftmost() {
        // ids: a=0 b=1 c=2, ab=3, bc=4, abc=5, aa=6
        let rows = [
            0, 0, 5, 6, // a a -> aa (rank 5)
            0, 1, 1, 3, // a b -> ab (rank 1)
            1, 2, 0, 4, // b c -> bc (rank 0)
            3, 2, 2, 5, // ab c -> abc (rank 2)
        ];
        let m = Merges::new(&rows).unwrap();
        assert!(m.is_sorted());
        // "abc": bc (rank 0) wins over ab (rank 1); no merge (a, bc) exists.
        let mut t = [0, 1, 2];
        let mut r = [0; 3];
        let n = merge(&m, &mut t, &mut r);
        assert_eq!(&t[..n], &[0, 4]);
        // "aaa": the leftmost pair merges first.
        let mut t = [0, 0, 0];
        let n = merge(&m, &mut t, &mut r);
        assert_eq!(&t[..n], &[6, 0]);
        // "abab": ab, ab.
        let mut t = [0, 1, 0, 1];
        let mut r = [0; 4];
        let n = merge(&m, &mut t, &mut r);
        assert_eq!(&t[..n], &[3, 3]);
    }
}
