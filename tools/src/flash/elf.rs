//! The bytes a firmware ELF puts into target memory, chosen the way probe-rs's ELF loader
//! chooses them, so the layout is checked before any probe is opened.

use std::path::Path;

use object::elf::{FileHeader32, FileHeader64, PT_LOAD};
use object::read::elf::{ElfFile, FileHeader, ProgramHeader};
use object::{Endianness, FileKind, Object, ObjectSection};
use probe_rs::config::MemoryRange;

use super::FlashError;

/// One loadable segment: `data` goes to `address` (the segment's physical address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfSegment {
    /// Load (physical) address.
    pub address: u64,
    /// File contents of the segment; `.bss`-style zero fill is not written.
    pub data: Vec<u8>,
    /// Names of the sections inside it, for messages.
    pub sections: Vec<String>,
}

impl ElfSegment {
    /// Addresses it covers.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.address..self.address + self.data.len() as u64
    }
}

/// Read `path` and return its loadable segments in program-header order.
///
/// A segment counts when it is `PT_LOAD`, has file data and contains at least one section
/// (probe-rs skips segments without sections, e.g. a stray program header over the ELF
/// header itself); its address is `p_paddr`, since that is where flash contents live
/// when `.data` is copied to RAM at boot.
pub fn read_segments(path: &Path) -> Result<Vec<ElfSegment>, FlashError> {
    let bytes = std::fs::read(path).map_err(|source| FlashError::ReadFirmware {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| FlashError::BadElf {
        path: path.to_path_buf(),
        reason,
    };
    let unreadable = |e: object::read::Error| bad(e.to_string());
    let segments = match FileKind::parse(bytes.as_slice()) {
        Ok(FileKind::Elf32) => segments(
            &ElfFile::<FileHeader32<Endianness>>::parse(bytes.as_slice()).map_err(unreadable)?,
        )
        .map_err(bad)?,
        Ok(FileKind::Elf64) => segments(
            &ElfFile::<FileHeader64<Endianness>>::parse(bytes.as_slice()).map_err(unreadable)?,
        )
        .map_err(bad)?,
        Ok(other) => {
            return Err(FlashError::NotElf {
                path: path.to_path_buf(),
                what: format!("looks like {other:?}"),
            });
        }
        Err(_) => {
            return Err(FlashError::NotElf {
                path: path.to_path_buf(),
                what: "unrecognised format".to_string(),
            });
        }
    };
    if segments.is_empty() {
        return Err(FlashError::NoLoadableSegments {
            path: path.to_path_buf(),
        });
    }
    Ok(segments)
}

fn segments<H: FileHeader<Endian = Endianness>>(
    file: &ElfFile<'_, H>,
) -> Result<Vec<ElfSegment>, String> {
    let endian = file.endian();
    let data = file.data();
    let mut out = Vec::new();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != PT_LOAD {
            continue;
        }
        let bytes = ph
            .data(endian, data)
            .map_err(|()| "a segment's data lies outside the file".to_string())?;
        if bytes.is_empty() {
            continue;
        }
        let (offset, len) = ph.file_range(endian);
        let in_file = offset..offset + len;
        let mut sections = Vec::new();
        for section in file.sections() {
            let Some((s_off, s_len)) = section.file_range() else {
                continue;
            };
            // probe-rs's own containment test, so an empty section on a segment boundary
            // is judged the same way.
            if in_file.contains_range(&(s_off..s_off + s_len)) {
                sections.push(section.name().map_err(|e| e.to_string())?.to_string());
            }
        }
        if sections.is_empty() {
            continue;
        }
        out.push(ElfSegment {
            address: ph.p_paddr(endian).into(),
            data: bytes.to_vec(),
            sections,
        });
    }
    Ok(out)
}
