//! Everything `glimpse flash` can refuse or fail at, each with enough detail to fix it.

use std::ops::Range;
use std::path::PathBuf;

/// A refusal (bad input, found before the probe is touched) or a probe/flash failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlashError {
    /// probe-rs knows no chip of this name.
    #[error("unknown chip {chip:?}{}", suggest(suggestions))]
    UnknownChip {
        /// The name given with --chip.
        chip: String,
        /// Known chips that start with it (a few), if any.
        suggestions: Vec<String>,
    },
    /// The chip name matches several chips.
    #[error("chip name {chip:?} matches several chips; give the full name, e.g. one of: {}", matches.join(", "))]
    AmbiguousChip {
        /// The name given with --chip.
        chip: String,
        /// Some of the chips it matches.
        matches: Vec<String>,
    },
    /// The firmware file could not be read.
    #[error("cannot read firmware {}: {source}", path.display())]
    ReadFirmware {
        /// The --firmware path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The firmware file is not an ELF executable.
    #[error("firmware {} is not an ELF file ({what}); pass the linked ELF, not a .bin or .hex", path.display())]
    NotElf {
        /// The --firmware path.
        path: PathBuf,
        /// What it looks like instead.
        what: String,
    },
    /// The firmware is an ELF file that cannot be read.
    #[error("firmware {} is a damaged ELF file: {reason}", path.display())]
    BadElf {
        /// The --firmware path.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// The firmware has nothing to write.
    #[error(
        "firmware {} has no loadable segments with data (is it linked with a memory.x / linker script?)",
        path.display()
    )]
    NoLoadableSegments {
        /// The --firmware path.
        path: PathBuf,
    },
    /// A firmware segment lies (partly) outside the chip's flash and RAM.
    #[error(
        "firmware segment {} ({}) is not inside the memory of {chip}; its memory map is:\n{map}",
        range_hex(range),
        sections.join(" ")
    )]
    SegmentOutsideMemory {
        /// The chip.
        chip: String,
        /// Load addresses of the segment.
        range: Range<u64>,
        /// Sections in it.
        sections: Vec<String>,
        /// The chip's memory map, one region a line.
        map: String,
    },
    /// The weights image could not be opened or is not a valid image.
    #[error("weights {} is not a usable Glimpse image: {reason}", path.display())]
    BadImage {
        /// The --weights path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of the weights file and its address was given.
    #[error("--weights and --weights-addr go together: the image needs an address and vice versa")]
    IncompleteWeights,
    /// The weights address is not in any flash region.
    #[error(
        "weights address {address:#010x} is not in a flash region of {chip}; its flash is:\n{flash}"
    )]
    WeightsNotInFlash {
        /// The chip.
        chip: String,
        /// --weights-addr.
        address: u64,
        /// The chip's flash regions, one a line.
        flash: String,
    },
    /// The weights address breaks a flash or image alignment rule.
    #[error(
        "weights address {address:#010x} is misaligned: it must start a flash sector of {region} \
         ({} here; pages are {}) and be a multiple of {image_align} bytes (the image's payload \
         alignment; the runtime needs at least {base_align}). Nearest valid addresses: {}",
        size(*sector_size),
        size(*page_size),
        nearest.iter().map(|a| format!("{a:#010x}")).collect::<Vec<_>>().join(", ")
    )]
    Misaligned {
        /// --weights-addr.
        address: u64,
        /// The flash region it is in.
        region: String,
        /// Size of the erase sector that contains it.
        sector_size: u64,
        /// Program page size of the region's flash algorithm.
        page_size: u64,
        /// The alignment the image layout gives payloads (glimpse_quant DATA_ALIGN).
        image_align: u64,
        /// The alignment the runtime checks at the image start (glimpse_core BASE_ALIGN).
        base_align: u64,
        /// Valid addresses before and after it, inside the region.
        nearest: Vec<u64>,
    },
    /// The weights do not fit between their address and the end of the flash region.
    #[error(
        "weights ({}) do not fit at {address:#010x}: {region} ends at {end:#010x}, leaving {}{}",
        size(*len),
        size(*available),
        if *capped { " (as limited by --flash-size)" } else { "" }
    )]
    WeightsTooBig {
        /// Image length.
        len: u64,
        /// --weights-addr.
        address: u64,
        /// The flash region.
        region: String,
        /// End of the usable region.
        end: u64,
        /// Bytes from the address to the end.
        available: u64,
        /// Whether --flash-size shortened the region.
        capped: bool,
    },
    /// --flash-size is larger than the region it limits.
    #[error("--flash-size {} is larger than {region} ({})", size(*flash_size), size(*region_len))]
    FlashSizeTooLarge {
        /// --flash-size.
        flash_size: u64,
        /// The region holding the weights.
        region: String,
        /// Its length.
        region_len: u64,
    },
    /// The weights would overwrite part of the firmware.
    #[error(
        "weights {} overlap firmware segment {} ({}); put the weights after {:#010x} \
         (rounded up to a sector) or move the firmware",
        range_hex(weights),
        range_hex(segment),
        sections.join(" "),
        segment.end
    )]
    Overlap {
        /// Where the weights would go.
        weights: Range<u64>,
        /// The firmware segment in the way.
        segment: Range<u64>,
        /// Sections in that segment.
        sections: Vec<String>,
    },
    /// Erasing the weights' last sector would also erase firmware bytes.
    #[error(
        "weights {} end inside sector {}, which also holds firmware segment {} ({}); erasing it for \
         the weights would destroy firmware code, so leave the rest of that sector to the weights",
        range_hex(weights),
        range_hex(sector),
        range_hex(segment),
        sections.join(" ")
    )]
    SharesSector {
        /// Where the weights would go.
        weights: Range<u64>,
        /// The sector both touch.
        sector: Range<u64>,
        /// The firmware segment in it.
        segment: Range<u64>,
        /// Sections in that segment.
        sections: Vec<String>,
    },
    /// probe-rs has no (unambiguous) flash algorithm for the region.
    #[error(
        "probe-rs has no single flash algorithm for {region} of {chip}: {why}{}",
        if candidates.is_empty() { String::new() } else { format!(": {}", candidates.join(", ")) }
    )]
    NoFlashAlgorithm {
        /// The chip.
        chip: String,
        /// The region.
        region: String,
        /// None found, or several without a default.
        why: &'static str,
        /// The algorithms that could write the region, when there are several.
        candidates: Vec<String>,
    },
    /// No debug probe is connected (or visible).
    #[error(
        "no debug probe found: connect one (ST-Link, CMSIS-DAP, J-Link, ...) and check its USB \
         permissions, or pass --dry-run to check the layout without one"
    )]
    NoProbe,
    /// Probes are connected but this process may not open them.
    #[error("debug probe found but not accessible (install probe-rs's udev rules?): {probes}")]
    ProbeNotAccessible {
        /// The probes, one a line.
        probes: String,
    },
    /// Several probes and no --probe to pick one.
    #[error(
        "several debug probes are connected; choose one with --probe VID:PID[:SERIAL]:\n{probes}"
    )]
    SeveralProbes {
        /// The probes, one a line.
        probes: String,
    },
    /// --probe does not parse as a selector.
    #[error("--probe {given:?} is not VID:PID or VID:PID:SERIAL (hex ids): {reason}")]
    BadProbeSelector {
        /// --probe.
        given: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Opening or attaching through the probe failed.
    #[error("{what}: {source}")]
    Probe {
        /// What was being done.
        what: &'static str,
        /// probe-rs's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// probe-rs read the firmware ELF differently from the plan (a bug on our side).
    #[error(
        "probe-rs would write the firmware as {probe_rs}, but the plan has {planned}; refusing to \
         write a layout that was not checked"
    )]
    PlanMismatch {
        /// probe-rs's chunks.
        probe_rs: String,
        /// Ours.
        planned: String,
    },
    /// Erasing or programming failed.
    #[error("flashing failed: {source}")]
    Flash {
        /// probe-rs's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading back what was written gave different bytes.
    #[error(
        "verify failed: {mismatches} byte(s) differ in {} of {what}; first at {address:#010x} \
         (wrote {expected:#04x}, read {found:#04x})",
        range_hex(range)
    )]
    VerifyMismatch {
        /// "firmware" or "weights".
        what: &'static str,
        /// The chunk that was checked.
        range: Range<u64>,
        /// First differing address.
        address: u64,
        /// The byte written there.
        expected: u8,
        /// The byte read back.
        found: u8,
        /// How many bytes differ in the chunk.
        mismatches: u64,
    },
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        "; `probe-rs chip list` shows the names probe-rs knows".to_string()
    } else {
        format!("; did you mean one of: {}", s.join(", "))
    }
}

/// `[start, end)` in hex, with its length.
pub(crate) fn range_hex(r: &Range<u64>) -> String {
    format!(
        "{:#010x}..{:#010x} ({})",
        r.start,
        r.end,
        size(r.end.saturating_sub(r.start))
    )
}

/// Bytes, with a binary unit when it divides evenly (sector sizes) and the exact count
/// otherwise (image lengths).
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}
