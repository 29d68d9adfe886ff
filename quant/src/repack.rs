//! The [`TensorLayout::Q8Rows4`](crate::layout::TensorLayout::Q8Rows4) arrangement of a
//! Q8_0 matrix: converting plain Q8_0 rows to it and back, and where each field of a
//! record lies. Pure byte shuffles (plus the code sums), so a repacked matrix holds
//! exactly the numbers of the plain one and every kernel computes the same bits on both.

use crate::error::QuantError;
use crate::layout::{QK, ROWS4, ROWS4_BLOCK_BYTES};

/// Bytes of a plain Q8_0 block.
const B34: usize = 2 + QK;

/// Offset, inside a record, of the f16 scale of row `slot` (0..4) of the group.
pub const fn scale_offset(slot: usize) -> usize {
    2 * slot
}

/// Offset, inside a record, of the i16 code sum of row `slot`.
pub const fn sum_offset(slot: usize) -> usize {
    2 * ROWS4 + 2 * slot
}

/// Offset, inside a record, of the 32 codes of row `slot`.
pub const fn codes_offset(slot: usize) -> usize {
    4 * ROWS4 + QK * slot
}

fn check(rows: usize, cols: usize, plain: usize, packed: usize) -> Result<usize, QuantError> {
    if !rows.is_multiple_of(ROWS4) {
        return Err(QuantError::NotBlockMultiple { len: rows });
    }
    if !cols.is_multiple_of(QK) {
        return Err(QuantError::NotBlockMultiple { len: cols });
    }
    let nb = cols / QK;
    let want = rows.saturating_mul(nb).saturating_mul(B34);
    if plain != want {
        return Err(QuantError::LengthMismatch {
            expected: want,
            got: plain,
        });
    }
    let want = (rows / ROWS4)
        .saturating_mul(nb)
        .saturating_mul(ROWS4_BLOCK_BYTES);
    if packed != want {
        return Err(QuantError::LengthMismatch {
            expected: want,
            got: packed,
        });
    }
    Ok(nb)
}

/// Rearrange `rows` plain Q8_0 rows of `cols` values (`src`, `rows·cols/32·34` bytes)
/// into `dst` (`rows/4 · cols/32 · 144` bytes), computing each block's code sum.
/// Errors (and writes nothing) when `rows` is not a multiple of 4, `cols` not of 32, or
/// a length does not match.
pub fn repack_rows4(
    rows: usize,
    cols: usize,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let nb = check(rows, cols, src.len(), dst.len())?;
    let rb = nb * B34;
    for (g, out) in dst.chunks_exact_mut(nb * ROWS4_BLOCK_BYTES).enumerate() {
        for (b, rec) in out.chunks_exact_mut(ROWS4_BLOCK_BYTES).enumerate() {
            for slot in 0..ROWS4 {
                let at = (g * ROWS4 + slot) * rb + b * B34;
                let block = &src[at..at + B34];
                rec[scale_offset(slot)..scale_offset(slot) + 2].copy_from_slice(&block[..2]);
                let sum: i16 = block[2..].iter().map(|&q| i16::from(q as i8)).sum();
                rec[sum_offset(slot)..sum_offset(slot) + 2].copy_from_slice(&sum.to_le_bytes());
                rec[codes_offset(slot)..codes_offset(slot) + QK].copy_from_slice(&block[2..]);
            }
        }
    }
    Ok(())
}

/// The inverse of [`repack_rows4`]: plain Q8_0 rows back from a repacked matrix (the
/// sums are dropped, not checked).
pub fn unpack_rows4(
    rows: usize,
    cols: usize,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let nb = check(rows, cols, dst.len(), src.len())?;
    let rb = nb * B34;
    for (g, grp) in src.chunks_exact(nb * ROWS4_BLOCK_BYTES).enumerate() {
        for (b, rec) in grp.chunks_exact(ROWS4_BLOCK_BYTES).enumerate() {
            for slot in 0..ROWS4 {
                let at = (g * ROWS4 + slot) * rb + b * B34;
                let block = &mut dst[at..at + B34];
                block[..2].copy_from_slice(&rec[scale_offset(slot)..scale_offset(slot) + 2]);
                block[2..].copy_from_slice(&rec[codes_offset(slot)..codes_offset(slot) + QK]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn plain(rows: usize, cols: usize) -> std::vec::Vec<u8> {
        let mut s = 0x9e37_79b9u32;
        (0..rows * cols / QK * B34)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as u8
            })
            .collect()
    }

    #[test]
    fn round_trips_and_sums_the_codes() {
        let (rows, cols) = (8, 96);
        let src = plain(rows, cols);
        let mut packed = vec![0u8; rows / 4 * cols / QK * ROWS4_BLOCK_BYTES];
        repack_rows4(rows, cols, &src, &mut packed).unwrap();
        let mut back = vec![0u8; src.len()];
        unpack_rows4(rows, cols, &packed, &mut back).unwrap();
        assert_eq!(back, src);
        // Row 6 (group 1, slot 2), block 2: the record's fields are that block's.
        let rec = &packed[(3 + 2) * ROWS4_BLOCK_BYTES..][..ROWS4_BLOCK_BYTES];
        let blk = &src[6 * 3 * B34 + 2 * B34..][..B34];
        assert_eq!(&rec[scale_offset(2)..scale_offset(2) + 2], &blk[..2]);
        assert_eq!(&rec[codes_offset(2)..codes_offset(2) + QK], &blk[2..]);
        let sum: i32 = blk[2..].iter().map(|&q| i32::from(q as i8)).sum();
        let stored = i16::from_le_bytes([rec[sum_offset(2)], rec[sum_offset(2) + 1]]);
        assert_eq!(i32::from(stored), sum);
    }

    #[test]
    fn refuses_shapes_it_cannot_hold_and_writes_nothing() {
        let src = plain(6, 64);
        let mut dst = vec![7u8; 1024];
        assert_eq!(
            repack_rows4(6, 64, &src, &mut dst),
            Err(QuantError::NotBlockMultiple { len: 6 })
        );
        assert!(repack_rows4(4, 64, &src[..4 * 68], &mut dst).is_err());
        assert!(dst.iter().all(|&b| b == 7));
    }
}
