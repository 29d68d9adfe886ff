//! Damaged weights images: every single-byte flip, every truncation, trailing bytes and
//! random multi-byte damage must be refused with an error (never a panic, never a view
//! outside the buffer), and structural damage hidden behind recomputed checksums must
//! still be caught or yield a consistent image.

mod image_common;

use glimpse_core::image::{ImageError, Model};
use glimpse_quant::DType;
use glimpse_quant::crc32::crc32;
use glimpse_quant::layout::{DATA_ALIGN, HEADER_LEN, Header};
use glimpse_tests::AlignedBytes;
use image_common::Rng;

/// Touch everything a runtime would, asserting the invariants `parse` promises.
fn walk(img: &Model<'_>) {
    let base = img.as_bytes().as_ptr_range();
    let cfg = img.config();
    assert!(cfg.name.len() <= 64);
    let mut prev: Option<&str> = None;
    let mut n = 0;
    for (i, t) in img.iter().enumerate() {
        n += 1;
        assert_eq!(t.index as usize, i);
        if let Some(p) = prev {
            assert!(p < t.name, "names out of order: {p:?} then {:?}", t.name);
        }
        prev = Some(t.name);
        assert!(!t.name.is_empty());
        assert_eq!(t.offset % DATA_ALIGN as u64, 0);
        let r = t.data.as_ptr_range();
        assert!(
            base.start <= r.start && r.end <= base.end,
            "payload outside the image"
        );
        assert_eq!(r.start as usize % 16, 0);
        assert_eq!(t.dtype.payload_bytes(t.dims()), Some(t.data.len() as u64));
        assert_eq!(img.find(t.name).unwrap().index, t.index);
        t.expect(Some(t.dtype), t.dims()).unwrap();
        let elems = t.elems() as usize;
        match t.dtype {
            DType::F32 => assert_eq!(t.as_f32().unwrap().len(), elems),
            DType::U32 => assert_eq!(t.as_u32().unwrap().len(), elems),
            DType::I32 => assert_eq!(t.as_i32().unwrap().len(), elems),
            DType::U8 => assert_eq!(t.as_u8().unwrap().len(), elems),
            DType::F16 => assert_eq!(t.as_f16().unwrap().len(), elems),
            DType::BF16 => assert_eq!(t.as_bf16().unwrap().len(), elems),
            _ => assert!(matches!(t.as_f32(), Err(ImageError::WrongDType { .. }))),
        }
        let _ = t.verify();
    }
    assert_eq!(n, img.len());
    assert_eq!(
        img.tensor(n).unwrap_err(),
        ImageError::IndexOutOfRange { index: n }
    );
}

/// Parse, verify and walk.
fn check(bytes: &[u8]) -> Result<(), ImageError> {
    let img = Model::parse(bytes)?;
    walk(&img);
    img.verify()
}

#[test]
fn the_sample_itself_is_good() {
    let bytes = image_common::image();
    // Small enough that the quadratic tests below stay quick.
    assert!((4_000..16_000).contains(&bytes.len()), "{}", bytes.len());
    check(AlignedBytes::new(&bytes).as_slice()).unwrap();
}

#[test]
fn every_single_byte_flip_is_refused() {
    let bytes = image_common::image();
    let mut buf = AlignedBytes::new(&bytes);
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            buf.as_mut_slice()[i] ^= bit;
            let r = check(buf.as_slice());
            assert!(r.is_err(), "flip {bit:#04x} at byte {i} was accepted");
            buf.as_mut_slice()[i] ^= bit;
        }
    }
    check(buf.as_slice()).unwrap();
}

#[test]
fn every_truncation_is_refused() {
    let bytes = image_common::image();
    for len in 0..bytes.len() {
        let buf = AlignedBytes::new(&bytes[..len]);
        assert!(
            check(buf.as_slice()).is_err(),
            "truncated to {len} accepted"
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let bytes = image_common::image();
    for extra in [&[0u8][..], &[1], &[0; 64]] {
        let mut b = bytes.clone();
        b.extend_from_slice(extra);
        let buf = AlignedBytes::new(&b);
        assert_eq!(
            Model::parse(buf.as_slice()).unwrap_err(),
            ImageError::LengthMismatch {
                header: bytes.len() as u64,
                actual: b.len() as u64
            }
        );
    }
}

#[test]
fn random_damage_is_refused() {
    let original = image_common::image();
    let mut rng = Rng::new(0xC0FF_EE00_D15E_A5E5);
    let mut accepted_identical = 0;
    for iter in 0..3000 {
        let mut b = original.clone();
        for _ in 0..1 + rng.below(4) {
            let len = b.len().max(1);
            match rng.below(8) {
                // Overwrite a few bytes with random values.
                0..=2 => {
                    let at = rng.below(len);
                    let n = (1 + rng.below(8)).min(b.len().saturating_sub(at));
                    let fill = rng.bytes(n);
                    b[at..at + n].copy_from_slice(&fill);
                }
                // Flip one bit.
                3 => {
                    let at = rng.below(len);
                    if let Some(x) = b.get_mut(at) {
                        *x ^= 1 << rng.below(8);
                    }
                }
                // Copy a chunk from elsewhere in the image (plausible-looking damage).
                4 => {
                    let n = 1 + rng.below(64);
                    if b.len() > n {
                        let from = rng.below(b.len() - n);
                        let to = rng.below(b.len() - n);
                        b.copy_within(from..from + n, to);
                    }
                }
                // Zero a run.
                5 => {
                    let at = rng.below(len);
                    let n = (1 + rng.below(32)).min(b.len().saturating_sub(at));
                    b[at..at + n].fill(0);
                }
                // Truncate.
                6 => b.truncate(rng.below(len)),
                // Extend.
                _ => {
                    let n = 1 + rng.below(80);
                    let extra = rng.bytes(n);
                    b.extend_from_slice(&extra);
                }
            }
        }
        let r = check(AlignedBytes::new(&b).as_slice());
        if b == original {
            // Some damage undoes itself (a chunk copied over its equal, zeroing zeros).
            assert!(r.is_ok());
            accepted_identical += 1;
        } else {
            assert!(r.is_err(), "iteration {iter}: damaged image accepted");
        }
    }
    // Most iterations must actually have changed something.
    assert!(accepted_identical < 300, "{accepted_identical}");
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Recompute the meta CRC (when the damaged header's regions are in bounds) and the
/// header CRC, so that only the structural checks stand between the damage and the user.
fn reseal(b: &mut [u8]) {
    let region = |b: &[u8], off: u64, len: u64| -> Option<std::ops::Range<usize>> {
        let s = usize::try_from(off).ok()?;
        let e = s.checked_add(usize::try_from(len).ok()?)?;
        (e <= b.len()).then_some(s..e)
    };
    let count = u32::from_le_bytes(b[48..52].try_into().unwrap()) as u64;
    let parts = [
        region(b, get_u64(b, 24), get_u64(b, 32)),
        region(b, get_u64(b, 40), count * 64),
        region(b, get_u64(b, 56), get_u64(b, 64)),
    ];
    if parts.iter().all(Option::is_some) {
        let mut c = glimpse_quant::crc32::Crc32::new();
        for p in parts.into_iter().flatten() {
            c.update(&b[p]);
        }
        b[88..92].copy_from_slice(&c.finish().to_le_bytes());
    }
    let h = crc32(&b[..124]);
    b[124..128].copy_from_slice(&h.to_le_bytes());
}

#[test]
fn structural_damage_behind_valid_checksums_is_caught_or_consistent() {
    let original = image_common::image();
    let h = Header::decode(&original).unwrap();
    let meta_end = h.names.end().unwrap() as usize;
    let mut rng = Rng::new(0x5EA1_ED00);
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..4000 {
        let mut b = original.clone();
        for _ in 0..1 + rng.below(3) {
            // Mostly the table and names, sometimes the header's region fields.
            let at = if rng.below(4) == 0 {
                16 + rng.below(88 - 16)
            } else {
                HEADER_LEN + rng.below(meta_end - HEADER_LEN)
            };
            match rng.below(3) {
                0 => b[at] ^= 1 << rng.below(8),
                1 => b[at] = rng.next_u64() as u8,
                _ => b[at] = b[at].wrapping_add(1),
            }
        }
        reseal(&mut b);
        // `check` asserts the parse invariants when the damage yields a valid image (a
        // renamed tensor that keeps the order, say): that is acceptable here.
        match check(AlignedBytes::new(&b).as_slice()) {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    // Nearly all structural damage must be caught; the few acceptances are harmless
    // renames or config edits, and were walked above.
    assert!(refused > 3000, "refused {refused}, accepted {accepted}");
}

#[test]
fn misaligned_buffers_are_refused_not_read() {
    let bytes = image_common::image();
    let mut padded = vec![0u8; 8];
    padded.extend_from_slice(&bytes);
    let buf = AlignedBytes::new(&padded);
    assert_eq!(
        Model::parse(&buf.as_slice()[8..]).unwrap_err(),
        ImageError::Misaligned { align: 16 }
    );
}
