//! NumPy `.npy` files of little-endian f32 arrays: the writer `glimpse logits` uses and
//! the reader the tests compare against PyTorch fixtures with.
//!
//! Format (numpy `lib/format.py`, version 1.0): the magic `\x93NUMPY`, version bytes
//! `1 0`, a u16 LE header length, then an ASCII Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (..), }` padded with spaces and a
//! final newline so the data starts on a 64-byte boundary, then the raw data in C order.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The bytes of a version-1.0 `.npy` file holding `data` with `shape` (C order).
pub fn to_bytes_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    let elems: usize = shape.iter().product();
    ensure!(
        elems == data.len(),
        "npy: shape {shape:?} holds {elems} values, got {}",
        data.len()
    );
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // magic(6) + version(2) + length(2) + header + '\n' must be a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let hlen = u16::try_from(header.len()).context("npy: header longer than 65535 bytes")?;
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&hlen.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Write `data` with `shape` to `path` as `.npy`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let bytes = to_bytes_f32(shape, data)?;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Shape and values of an `.npy` f32 array (little-endian, C order; versions 1 to 3).
pub fn parse_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    ensure!(bytes.len() >= 10 && &bytes[..6] == MAGIC, "npy: bad magic");
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "npy: truncated header");
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => bail!("npy: unsupported version {v}"),
    };
    let header = bytes
        .get(start..start + hlen)
        .context("npy: truncated header")?;
    let header = std::str::from_utf8(header).context("npy: header is not text")?;
    let field = |key: &str| -> Result<&str> {
        let at = header
            .find(&format!("'{key}':"))
            .with_context(|| format!("npy: no '{key}' in header {header:?}"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    ensure!(
        field("descr")?.starts_with("'<f4'"),
        "npy: only little-endian f32 ('<f4') is supported: {header:?}"
    );
    ensure!(
        field("fortran_order")?.starts_with("False"),
        "npy: Fortran order is not supported"
    );
    let shape_txt = field("shape")?;
    let close = shape_txt.find(')').context("npy: unterminated shape")?;
    let shape = shape_txt[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().context("npy: bad dimension"))
        .collect::<Result<Vec<_>>>()?;
    let elems: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    ensure!(
        body.len() == 4 * elems,
        "npy: {} data bytes for shape {shape:?}",
        body.len()
    );
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, data))
}

/// Read an `.npy` f32 array from `path`.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_f32(&bytes).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_alignment() {
        for shape in [vec![3usize, 5], vec![7], vec![2, 1, 4]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
            let b = to_bytes_f32(&shape, &data).unwrap();
            let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0, "data must start 64-aligned");
            assert_eq!(b[10 + hlen - 1], b'\n');
            let (s, d) = parse_f32(&b).unwrap();
            assert_eq!((s, d), (shape, data));
        }
        assert!(to_bytes_f32(&[2, 2], &[1.0; 3]).is_err());
        assert!(parse_f32(b"\x93NUMPX\x01\x00").is_err());
    }

    #[test]
    fn header_is_what_numpy_writes() {
        // numpy 2.x writes exactly this header for np.save(f, np.zeros((2, 3), '<f4')).
        let b = to_bytes_f32(&[2, 3], &[0.0; 6]).unwrap();
        let text = std::str::from_utf8(&b[10..]).unwrap_or("");
        assert!(
            text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"),
            "{text:?}"
        );
        let one = to_bytes_f32(&[4], &[0.0; 4]).unwrap();
        assert!(
            std::str::from_utf8(&one[10..74])
                .unwrap()
                .contains("'shape': (4,)")
        );
    }
}
