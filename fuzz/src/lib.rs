//! Helpers shared by the fuzz targets: aligned copies, the re-sealing of checksums, and
//! a walk over everything a parsed image offers, asserting what `Model::parse` promises.

use glimpse_core::image::{Model, ImageError};
use glimpse_quant::DType;
use glimpse_quant::crc32::{Crc32, crc32};
use glimpse_quant::layout::{DATA_ALIGN, ENTRY_LEN, HEADER_LEN};

/// A copy of `data` starting on a 16-byte boundary, as a mapped file or flash would be.
/// Returns the buffer and the offset of the copy in it.
pub fn aligned_copy(data: &[u8]) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; data.len() + 16];
    let start = buf.as_ptr().align_offset(16).min(16);
    buf[start..start + data.len()].copy_from_slice(data);
    (buf, start)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// Recompute the metadata CRC (when the header's regions are in bounds) and the header
/// CRC, so that the fuzzer's changes reach the structural checks behind them.
pub fn reseal(b: &mut [u8]) {
    if b.len() < HEADER_LEN {
        return;
    }
    let region = |b: &[u8], off: u64, len: u64| -> Option<std::ops::Range<usize>> {
        let s = usize::try_from(off).ok()?;
        let e = s.checked_add(usize::try_from(len).ok()?)?;
        (e <= b.len()).then_some(s..e)
    };
    let count = u64::from(u32::from_le_bytes([b[48], b[49], b[50], b[51]]));
    let parts = [
        region(b, u64_at(b, 24), u64_at(b, 32)),
        region(b, u64_at(b, 40), count.saturating_mul(ENTRY_LEN as u64)),
        region(b, u64_at(b, 56), u64_at(b, 64)),
    ];
    if parts.iter().all(Option::is_some) {
        let mut c = Crc32::new();
        for p in parts.into_iter().flatten() {
            c.update(&b[p]);
        }
        b[88..92].copy_from_slice(&c.finish().to_le_bytes());
    }
    let h = crc32(&b[..124]);
    b[124..128].copy_from_slice(&h.to_le_bytes());
}

/// Parse, walk every tensor and the config, verify. Panics (a finding) when a promise
/// of `parse` does not hold.
pub fn exercise(bytes: &[u8]) -> Result<(), ImageError> {
    let img = Model::parse(bytes)?;
    let range = bytes.as_ptr_range();
    let cfg = img.config();
    // Walk the config the way inspect does (every field, through Debug).
    let text = format!("{cfg:?}");
    assert!(!text.is_empty());
    if let Some(v) = &cfg.vision {
        let _ = v.tokens(v.image_size);
    }
    let mut prev: Option<&str> = None;
    let mut n = 0usize;
    for t in img.iter() {
        assert_eq!(t.index as usize, n);
        n += 1;
        if let Some(p) = prev {
            assert!(p.as_bytes() < t.name.as_bytes());
        }
        prev = Some(t.name);
        let r = t.data.as_ptr_range();
        assert!(range.start <= r.start && r.end <= range.end);
        assert_eq!(t.offset % DATA_ALIGN as u64, 0);
        assert_eq!(t.dtype.payload_bytes(t.dims()), Some(t.data.len() as u64));
        assert_eq!(img.find(t.name).map(|f| f.index), Ok(t.index));
        assert_eq!(t.expect(Some(t.dtype), t.dims()), Ok(()));
        let elems = t.elems() as usize;
        match t.dtype {
            DType::F32 => assert_eq!(t.as_f32().map(<[f32]>::len), Ok(elems)),
            DType::U32 => assert_eq!(t.as_u32().map(<[u32]>::len), Ok(elems)),
            DType::I32 => assert_eq!(t.as_i32().map(<[i32]>::len), Ok(elems)),
            DType::U8 => assert_eq!(t.as_u8().map(<[u8]>::len), Ok(elems)),
            DType::F16 => assert_eq!(t.as_f16().map(<[_]>::len), Ok(elems)),
            DType::BF16 => assert_eq!(t.as_bf16().map(<[_]>::len), Ok(elems)),
            _ => assert!(t.as_f32().is_err()),
        }
        let _ = t.verify();
    }
    assert_eq!(n, img.len());
    assert!(img.tensor(n).is_err());
    let _ = img.find("decoder.embed_tokens.weight");
    img.verify()
}
