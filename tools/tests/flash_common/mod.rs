//! Inputs for the `glimpse flash` tests: a minimal ARM ELF executable written byte by byte
//! (so the tests control every segment address) and small, valid weights images.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use glimpse_quant::DType;
use glimpse_quant::schema::{ModelConfig, ModelFamily, QuantRecipe};
use glimpse_quant::writer::ImageBuilder;
use glimpse_tools::flash::FlashArgs;

/// One loadable segment holding one section: `data` is stored at `load` and runs at `run`
/// (they differ for `.data`, copied from flash to RAM at boot).
#[derive(Clone, Debug)]
pub struct Seg {
    pub name: &'static str,
    pub load: u32,
    pub run: u32,
    pub data: Vec<u8>,
}

impl Seg {
    /// Code or constants: runs where it is stored.
    pub fn at(name: &'static str, addr: u32, data: Vec<u8>) -> Self {
        Self {
            name,
            load: addr,
            run: addr,
            data,
        }
    }
}

const EHDR: usize = 52;
const PHDR: usize = 32;
const SHDR: usize = 40;

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// A little-endian ELF32 ARM executable: header, one PT_LOAD per segment, the segment
/// bytes (4-byte aligned), `.shstrtab`, then section headers (null, one per segment,
/// `.shstrtab`).
pub fn elf32(segs: &[Seg]) -> Vec<u8> {
    let mut offsets = Vec::new();
    let mut at = EHDR + PHDR * segs.len();
    for s in segs {
        at = at.next_multiple_of(4);
        offsets.push(at);
        at += s.data.len();
    }
    let mut strtab = vec![0u8];
    let mut name_at = Vec::new();
    for s in segs {
        name_at.push(strtab.len() as u32);
        strtab.extend_from_slice(s.name.as_bytes());
        strtab.push(0);
    }
    let shstrtab_name = strtab.len() as u32;
    strtab.extend_from_slice(b".shstrtab\0");
    let strtab_at = at;
    let shoff = (strtab_at + strtab.len()).next_multiple_of(4);

    let mut v = Vec::new();
    v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0]);
    v.extend_from_slice(&[0; 8]);
    put16(&mut v, 2); // ET_EXEC
    put16(&mut v, 40); // EM_ARM
    put32(&mut v, 1);
    put32(&mut v, segs.first().map_or(0, |s| s.run | 1)); // Thumb entry
    put32(&mut v, EHDR as u32);
    put32(&mut v, shoff as u32);
    put32(&mut v, 0x0500_0000); // EABI version 5
    put16(&mut v, EHDR as u16);
    put16(&mut v, PHDR as u16);
    put16(&mut v, segs.len() as u16);
    put16(&mut v, SHDR as u16);
    put16(&mut v, segs.len() as u16 + 2);
    put16(&mut v, segs.len() as u16 + 1);
    for (s, &off) in segs.iter().zip(&offsets) {
        put32(&mut v, 1); // PT_LOAD
        put32(&mut v, off as u32);
        put32(&mut v, s.run);
        put32(&mut v, s.load);
        put32(&mut v, s.data.len() as u32);
        put32(&mut v, s.data.len() as u32);
        put32(&mut v, 5); // R + X
        put32(&mut v, 4);
    }
    for (s, &off) in segs.iter().zip(&offsets) {
        v.resize(off, 0);
        v.extend_from_slice(&s.data);
    }
    v.resize(strtab_at, 0);
    v.extend_from_slice(&strtab);
    v.resize(shoff, 0);
    v.extend_from_slice(&[0; SHDR]);
    for ((s, &off), &name) in segs.iter().zip(&offsets).zip(&name_at) {
        put32(&mut v, name);
        put32(&mut v, 1); // SHT_PROGBITS
        put32(&mut v, 0x6); // ALLOC + EXECINSTR
        put32(&mut v, s.run);
        put32(&mut v, off as u32);
        put32(&mut v, s.data.len() as u32);
        put32(&mut v, 0);
        put32(&mut v, 0);
        put32(&mut v, 4);
        put32(&mut v, 0);
    }
    put32(&mut v, shstrtab_name);
    put32(&mut v, 3); // SHT_STRTAB
    put32(&mut v, 0);
    put32(&mut v, 0);
    put32(&mut v, strtab_at as u32);
    put32(&mut v, strtab.len() as u32);
    put32(&mut v, 0);
    put32(&mut v, 0);
    put32(&mut v, 1);
    put32(&mut v, 0);
    v
}

/// Bytes from a seeded xorshift64, never zero (so a read of erased-or-absent memory as
/// zeros differs from every byte).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// A valid text-only weights image whose one tensor holds `payload` bytes (a multiple
/// of 4); the file is a little larger (header, table, padding).
pub fn image(payload: usize) -> Vec<u8> {
    let config = ModelConfig {
        name: "flash-test".try_into().unwrap(),
        family: ModelFamily::TextOnly,
        vision: None,
        projector: None,
        decoder: None,
        tokenizer: None,
        recipe: QuantRecipe {
            weights: DType::F32,
            kept: DType::F32,
            source: "test".try_into().unwrap(),
        },
    };
    let mut b = ImageBuilder::new(config);
    b.add(
        "blob",
        DType::F32,
        &[(payload / 4) as u32],
        noise(7, payload),
    )
    .unwrap();
    b.to_bytes().unwrap()
}

/// A scratch directory with a firmware and (optionally) an image in it.
pub struct Files {
    pub dir: tempfile::TempDir,
    pub firmware: PathBuf,
    pub weights: PathBuf,
}

impl Files {
    pub fn new(segs: &[Seg], image_bytes: Option<&[u8]>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let firmware = dir.path().join("fw.elf");
        std::fs::write(&firmware, elf32(segs)).unwrap();
        let weights = dir.path().join("model.glim");
        if let Some(b) = image_bytes {
            std::fs::write(&weights, b).unwrap();
        }
        Self {
            dir,
            firmware,
            weights,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Arguments for `chip`, with the weights at `addr` when given.
    pub fn args(&self, chip: &str, addr: Option<u64>) -> FlashArgs {
        FlashArgs {
            chip: chip.to_string(),
            firmware: self.firmware.clone(),
            weights: addr.map(|_| self.weights.clone()),
            weights_addr: addr,
            flash_size: None,
            flash_algorithm: None,
            dry_run: true,
            probe: None,
            no_reset: false,
        }
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
