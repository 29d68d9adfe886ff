//! The flash layout `glimpse flash` will write (which regions the firmware segments and the
//! weights land in, which sectors get erased) and every check that has to pass before a
//! probe is touched.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use glimpse_core::image::{BASE_ALIGN, Model};
use glimpse_host::MappedImage;
use glimpse_quant::layout::DATA_ALIGN;
use probe_rs::Target;
use probe_rs::config::{
    MemoryRange, MemoryRegion, NvmRegion, RawFlashAlgorithm, Registry, RegistryError,
};

use super::FlashArgs;
use super::elf::{ElfSegment, read_segments};
use super::error::{FlashError, range_hex, size};

/// What a memory region is, as far as writing to it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Non-volatile memory, written through a flash algorithm.
    Flash,
    /// RAM, written directly (gone at reset).
    Ram,
}

/// A region of the chip's memory map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// The region's name in probe-rs's target description (or its kind and start).
    pub name: String,
    /// Flash or RAM.
    pub kind: RegionKind,
    /// Addresses it covers.
    pub range: Range<u64>,
}

/// One firmware segment and where it lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedSegment {
    /// Load addresses.
    pub range: Range<u64>,
    /// ELF sections in it.
    pub sections: Vec<String>,
    /// The regions it spans, in address order (one, unless it runs across adjacent banks).
    pub regions: Vec<RegionInfo>,
}

/// Where the weights image lands and what writing it costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedWeights {
    /// The image file.
    pub path: PathBuf,
    /// Flash addresses of the image's bytes.
    pub range: Range<u64>,
    /// The flash region holding it.
    pub region: RegionInfo,
    /// End of the usable part of the region (the region's end unless --flash-size says less).
    pub usable_end: u64,
    /// probe-rs flash algorithm that will write it.
    pub algorithm: String,
    /// Program page size of that algorithm.
    pub page_size: u64,
    /// Size of the erase sector at the image's start.
    pub sector_size: u64,
    /// Whole sectors erased for the image (starts at the image, may run past its end).
    pub erase: Range<u64>,
    /// How many sectors that is.
    pub sectors: u64,
    /// The model the image carries.
    pub model: String,
    /// Its tensor count.
    pub tensors: u32,
}

/// Everything `glimpse flash` will write, checked against the chip's memory map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlashPlan {
    /// probe-rs's name of the chip.
    pub chip: String,
    /// The firmware ELF.
    pub firmware_path: PathBuf,
    /// Its loadable segments, in ELF order.
    pub firmware: Vec<PlannedSegment>,
    /// The weights, when given.
    pub weights: Option<PlannedWeights>,
}

/// A checked plan plus what is needed to carry it out.
pub(crate) struct Prepared {
    pub plan: FlashPlan,
    pub target: Target,
    pub segments: Vec<ElfSegment>,
    pub weights: Option<MappedImage>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// Check the arguments against the chip and the files, without any probe.
pub fn plan(args: &FlashArgs) -> Result<FlashPlan, FlashError> {
    prepare(args).map(|p| p.plan)
}

pub(crate) fn prepare(args: &FlashArgs) -> Result<Prepared, FlashError> {
    let target = find_chip(&args.chip)?;
    let segments = read_segments(&args.firmware)?;
    let mut firmware = Vec::with_capacity(segments.len());
    for s in &segments {
        let regions = covering_regions(&target.memory_map, &s.range()).ok_or_else(|| {
            FlashError::SegmentOutsideMemory {
                chip: target.name.clone(),
                range: s.range(),
                sections: s.sections.clone(),
                map: describe_map(&target.memory_map, |_| true),
            }
        })?;
        firmware.push(PlannedSegment {
            range: s.range(),
            sections: s.sections.clone(),
            regions,
        });
    }

    let (weights, mapped) = match (&args.weights, args.weights_addr) {
        (Some(path), Some(address)) => {
            let (mapped, model, tensors) = open_image(path)?;
            let len = mapped.bytes().len() as u64;
            let w = place_weights(
                &target,
                &firmware,
                Placement {
                    path,
                    address,
                    len,
                    flash_size: args.flash_size,
                    algorithm: args.flash_algorithm.as_deref(),
                },
            )?;
            (
                Some(PlannedWeights {
                    model,
                    tensors,
                    ..w
                }),
                Some(mapped),
            )
        }
        (None, None) => (None, None),
        // clap makes the two require each other; this is for library callers.
        _ => return Err(FlashError::IncompleteWeights),
    };

    Ok(Prepared {
        plan: FlashPlan {
            chip: target.name.clone(),
            firmware_path: args.firmware.clone(),
            firmware,
            weights,
        },
        target,
        segments,
        weights: mapped,
    })
}

fn find_chip(chip: &str) -> Result<Target, FlashError> {
    let registry = Registry::from_builtin_families();
    registry.get_target_by_name(chip).map_err(|e| match e {
        RegistryError::ChipNotUnique(..) => FlashError::AmbiguousChip {
            chip: chip.to_string(),
            matches: suggestions(&registry, chip),
        },
        _ => FlashError::UnknownChip {
            chip: chip.to_string(),
            suggestions: suggestions(&registry, chip),
        },
    })
}

/// A few known names close to `chip`: those starting with its longest prefix that any
/// chip starts with (so a typo late in the name still finds the family).
fn suggestions(registry: &Registry, chip: &str) -> Vec<String> {
    const MAX: usize = 8;
    let mut prefix = chip;
    while prefix.len() >= 3 {
        let mut found = registry.search_chips(prefix);
        if !found.is_empty() {
            // One name per package variant comes back; keep each once, in order.
            let mut seen = std::collections::HashSet::new();
            found.retain(|c| seen.insert(c.clone()));
            found.truncate(MAX);
            return found;
        }
        let mut cut = prefix.len() - 1;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix = &prefix[..cut];
    }
    Vec::new()
}

fn open_image(path: &Path) -> Result<(MappedImage, String, u32), FlashError> {
    let bad = |reason: String| FlashError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let mapped = MappedImage::open(path).map_err(|e| bad(e.to_string()))?;
    // Checksums too: flashing a corrupted image costs minutes and fails only on the device.
    let image = Model::parse(mapped.bytes()).map_err(|e| bad(e.to_string()))?;
    image.verify().map_err(|e| bad(e.to_string()))?;
    let model = image.config().name.as_str().to_string();
    let tensors = image.header().tensor_count;
    Ok((mapped, model, tensors))
}

struct Placement<'a> {
    path: &'a Path,
    address: u64,
    len: u64,
    flash_size: Option<u64>,
    algorithm: Option<&'a str>,
}

fn place_weights(
    target: &Target,
    firmware: &[PlannedSegment],
    p: Placement<'_>,
) -> Result<PlannedWeights, FlashError> {
    let not_in_flash = || FlashError::WeightsNotInFlash {
        chip: target.name.clone(),
        address: p.address,
        flash: describe_map(&target.memory_map, MemoryRegion::is_nvm),
    };
    // The first region that contains the address is the one probe-rs will use too.
    let (region, nvm) = match target
        .memory_map
        .iter()
        .enumerate()
        .find(|(_, r)| r.contains(p.address))
    {
        Some((i, r @ MemoryRegion::Nvm(nvm))) => (region_info(r, i), nvm),
        _ => return Err(not_in_flash()),
    };
    let algo = algorithm_for(target, nvm, p.algorithm).map_err(|(why, candidates)| {
        FlashError::NoFlashAlgorithm {
            chip: target.name.clone(),
            region: region.name.clone(),
            why,
            candidates,
        }
    })?;
    let page_size = u64::from(algo.flash_properties.page_size);
    let sector = sector_at(algo, p.address).ok_or_else(not_in_flash)?;

    let image_align = DATA_ALIGN as u64;
    if sector.start != p.address || !p.address.is_multiple_of(image_align) {
        let nearest = [sector.start, sector.end]
            .into_iter()
            .filter(|a| a.is_multiple_of(image_align) && nvm.range.contains(a))
            .collect();
        return Err(FlashError::Misaligned {
            address: p.address,
            region: region.name.clone(),
            sector_size: sector.end - sector.start,
            page_size,
            image_align,
            base_align: BASE_ALIGN as u64,
            nearest,
        });
    }

    let region_len = nvm.range.end - nvm.range.start;
    let usable_end = match p.flash_size {
        Some(s) if s > region_len => {
            return Err(FlashError::FlashSizeTooLarge {
                flash_size: s,
                region: region.name.clone(),
                region_len,
            });
        }
        Some(s) => nvm.range.start + s,
        None => nvm.range.end,
    };
    let end = p.address.saturating_add(p.len);
    if end > usable_end {
        return Err(FlashError::WeightsTooBig {
            len: p.len,
            address: p.address,
            region: region.name.clone(),
            end: usable_end,
            available: usable_end.saturating_sub(p.address),
            capped: usable_end != nvm.range.end,
        });
    }
    let weights = p.address..end;

    for s in firmware {
        if s.range.start < weights.end && weights.start < s.range.end {
            return Err(FlashError::Overlap {
                weights,
                segment: s.range.clone(),
                sections: s.sections.clone(),
            });
        }
    }

    // Sectors the image touches; it starts on a boundary, so only the last can hold
    // anything else.
    let mut erase = sector.clone();
    let mut sectors = 1;
    while erase.end < weights.end {
        let next = sector_at(algo, erase.end).ok_or_else(not_in_flash)?;
        erase.end = next.end;
        sectors += 1;
    }
    for s in firmware {
        if s.range.start < erase.end && erase.start < s.range.end {
            let last = sector_at(algo, weights.end - 1).unwrap_or(erase.clone());
            return Err(FlashError::SharesSector {
                weights,
                sector: last,
                segment: s.range.clone(),
                sections: s.sections.clone(),
            });
        }
    }

    Ok(PlannedWeights {
        path: p.path.to_path_buf(),
        range: weights,
        region,
        usable_end,
        algorithm: algo.name.clone(),
        page_size,
        sector_size: sector.end - sector.start,
        erase,
        sectors,
        model: String::new(),
        tensors: 0,
    })
}

/// The flash algorithm probe-rs will pick for `region`: one that covers the whole region
/// and may run on the region's first core; among several, `preferred` if it is one of
/// them, else the single default one. The error says why and lists the candidates.
pub(crate) fn algorithm_for<'t>(
    target: &'t Target,
    region: &NvmRegion,
    preferred: Option<&str>,
) -> Result<&'t RawFlashAlgorithm, (&'static str, Vec<String>)> {
    let Some(core) = region.cores.first() else {
        return Err(("no core can reach the region", Vec::new()));
    };
    let fits: Vec<_> = target
        .flash_algorithms
        .iter()
        .filter(|a| {
            a.flash_properties
                .address_range
                .contains_range(&region.range)
                && (a.cores.is_empty() || a.cores.contains(core))
        })
        .collect();
    let names = || {
        let mut v: Vec<String> = fits.iter().map(|a| a.name.clone()).collect();
        v.dedup();
        v
    };
    if let [one] = fits.as_slice() {
        return Ok(one);
    }
    if let Some(p) = preferred
        && let Some(a) = fits.iter().find(|a| a.name == p)
    {
        return Ok(a);
    }
    if fits.is_empty() {
        return Err(("none covers the region", Vec::new()));
    }
    let defaults: Vec<_> = fits.iter().filter(|a| a.default).collect();
    match defaults.as_slice() {
        [one] => Ok(one),
        [] => Err((
            "several cover it and none is the default; choose one with --flash-algorithm",
            names(),
        )),
        _ => Err((
            "several defaults cover it; choose one with --flash-algorithm",
            names(),
        )),
    }
}

/// The erase sector of `algo` that contains `address`.
///
/// A flash algorithm lists sector sizes by offset from its start; each entry applies
/// from its offset up to the next entry's (or the end), repeating.
fn sector_at(algo: &RawFlashAlgorithm, address: u64) -> Option<Range<u64>> {
    let props = &algo.flash_properties;
    let base = props.address_range.start;
    if !props.address_range.contains(&address) {
        return None;
    }
    let offset = address - base;
    let i = props.sectors.iter().rposition(|d| d.address <= offset)?;
    let desc = props.sectors.get(i)?;
    if desc.size == 0 {
        return None;
    }
    let limit = props
        .sectors
        .get(i + 1)
        .map_or(props.address_range.end, |d| base.saturating_add(d.address));
    let start = base + desc.address + (offset - desc.address) / desc.size * desc.size;
    Some(start..start.saturating_add(desc.size).min(limit))
}

/// The regions covering `range` back to back, when flash or RAM covers all of it (the
/// rule probe-rs applies to every chunk it is given).
fn covering_regions(map: &[MemoryRegion], range: &Range<u64>) -> Option<Vec<RegionInfo>> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let (i, r) = map.iter().enumerate().find(|(_, r)| r.contains(at))?;
        if !(r.is_nvm() || r.is_ram()) {
            return None;
        }
        out.push(region_info(r, i));
        at = r.address_range().end;
    }
    Some(out)
}

fn region_info(r: &MemoryRegion, index: usize) -> RegionInfo {
    let (name, kind) = match r {
        MemoryRegion::Nvm(n) => (n.name.clone(), RegionKind::Flash),
        MemoryRegion::Ram(n) => (n.name.clone(), RegionKind::Ram),
        MemoryRegion::Generic(n) => (n.name.clone(), RegionKind::Ram),
    };
    let range = r.address_range();
    let name = name.unwrap_or_else(|| {
        let what = if r.is_nvm() { "flash" } else { "memory" };
        format!("{what} region {index} at {:#010x}", range.start)
    });
    RegionInfo { name, kind, range }
}

fn describe_map(map: &[MemoryRegion], keep: impl Fn(&MemoryRegion) -> bool) -> String {
    map.iter()
        .enumerate()
        .filter(|(_, r)| keep(r))
        .map(|(i, r)| {
            let info = region_info(r, i);
            let kind = match r {
                MemoryRegion::Nvm(_) => "flash",
                MemoryRegion::Ram(_) => "ram",
                MemoryRegion::Generic(_) => "other",
            };
            format!("  {:<6} {} {}", kind, range_hex(&info.range), info.name)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for FlashPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "chip      {}", self.chip)?;
        writeln!(f, "firmware  {}", self.firmware_path.display())?;
        for s in &self.firmware {
            let regions: Vec<&str> = s.regions.iter().map(|r| r.name.as_str()).collect();
            let ram = s.regions.iter().any(|r| r.kind == RegionKind::Ram);
            writeln!(
                f,
                "  {}  {}{}  {}",
                range_hex(&s.range),
                regions.join("+"),
                if ram { " (RAM)" } else { "" },
                s.sections.join(" ")
            )?;
        }
        match &self.weights {
            None => writeln!(f, "weights   none")?,
            Some(w) => {
                writeln!(
                    f,
                    "weights   {} (model {:?}, tensors: {}, checksums ok)",
                    w.path.display(),
                    w.model,
                    w.tensors
                )?;
                writeln!(
                    f,
                    "  {}  {} {}, algorithm {}",
                    range_hex(&w.range),
                    w.region.name,
                    range_hex(&(w.region.range.start..w.usable_end)),
                    w.algorithm
                )?;
                writeln!(
                    f,
                    "  erases {} sector(s) {}; sector {} at the start, page {}; {} left after it",
                    w.sectors,
                    range_hex(&w.erase),
                    size(w.sector_size),
                    size(w.page_size),
                    size(w.usable_end - w.range.end)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_rs::config::SectorDescription;

    /// The H743's algorithm re-described with an STM32F4-style mixed layout (RM0090
    /// §3.3: four 16 KiB sectors, one of 64 KiB, then 128 KiB ones), so sector lookup
    /// meets size changes.
    fn mixed() -> RawFlashAlgorithm {
        let target = find_chip("STM32H743ZITx").unwrap();
        let mut algo = target.flash_algorithms[0].clone();
        algo.flash_properties.address_range = 0x0800_0000..0x0810_0000;
        algo.flash_properties.sectors = vec![
            SectorDescription {
                size: 0x4000,
                address: 0,
            },
            SectorDescription {
                size: 0x10000,
                address: 0x10000,
            },
            SectorDescription {
                size: 0x20000,
                address: 0x20000,
            },
        ];
        algo
    }

    #[test]
    fn sectors_follow_each_description() {
        let a = mixed();
        assert_eq!(sector_at(&a, 0x0800_0000), Some(0x0800_0000..0x0800_4000));
        assert_eq!(sector_at(&a, 0x0800_7fff), Some(0x0800_4000..0x0800_8000));
        assert_eq!(sector_at(&a, 0x0800_c000), Some(0x0800_c000..0x0801_0000));
        assert_eq!(sector_at(&a, 0x0801_0000), Some(0x0801_0000..0x0802_0000));
        assert_eq!(sector_at(&a, 0x0801_ffff), Some(0x0801_0000..0x0802_0000));
        assert_eq!(sector_at(&a, 0x0802_0000), Some(0x0802_0000..0x0804_0000));
        assert_eq!(sector_at(&a, 0x080f_ffff), Some(0x080e_0000..0x0810_0000));
        assert_eq!(sector_at(&a, 0x0810_0000), None);
        assert_eq!(sector_at(&a, 0x07ff_ffff), None);
    }

    #[test]
    fn sectors_tile_the_flash_without_gaps() {
        let a = mixed();
        let mut at = 0x0800_0000;
        let mut count = 0;
        while let Some(s) = sector_at(&a, at) {
            assert_eq!(s.start, at);
            at = s.end;
            count += 1;
        }
        assert_eq!(at, 0x0810_0000);
        // 4 x 16 KiB + 1 x 64 KiB + 7 x 128 KiB = 1 MiB.
        assert_eq!(count, 12);
    }

    #[test]
    fn sizes_print_in_binary_units_when_exact() {
        assert_eq!(size(128 * 1024), "128 KiB");
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(size(4352), "4352 bytes");
        assert_eq!(size(0), "0 bytes");
    }
}
