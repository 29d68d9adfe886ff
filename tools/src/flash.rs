//! `glimpse flash`: writes a firmware ELF and a weights image to a microcontroller's flash
//! through probe-rs, after checking the layout against the chip's memory map.
//!
//! probe-rs is a large dependency, so the work lives behind the `flash` cargo feature;
//! without it the subcommand still parses its arguments and says how to get it.

use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "flash")]
mod elf;
#[cfg(feature = "flash")]
mod error;
#[cfg(feature = "flash")]
mod plan;
#[cfg(feature = "flash")]
mod probe;

#[cfg(feature = "flash")]
pub use elf::{ElfSegment, read_segments};
#[cfg(feature = "flash")]
pub use error::FlashError;
#[cfg(feature = "flash")]
pub use plan::{FlashPlan, PlannedSegment, PlannedWeights, RegionInfo, RegionKind, plan};
#[cfg(feature = "flash")]
pub use probe::{FlashOutcome, dry_run, verify_readback, write};
/// probe-rs's probe lister, for [`write()`] (tests hand it a lister that finds nothing).
#[cfg(feature = "flash")]
pub use probe_rs::probe::list::Lister;

/// What to tell a user whose `glimpse` was built without probe-rs.
pub const NOT_BUILT: &str = "this glimpse was built without the `flash` feature (probe-rs); \
rebuild with `cargo install --path tools --features flash` or run \
`cargo run --release -p glimpse-tools --features flash -- flash ...`";

/// Arguments of `glimpse flash`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
The weights go into one flash region of the chip (probe-rs's memory map, e.g. BANK_1 or \
BANK_2 of an STM32H743, the XIP window of an RP2350) and must start on an erase-sector \
boundary of it, which also gives the 64-byte alignment the image's payloads need. They may \
not overlap the firmware's loadable segments nor share a sector with them. Everything is \
checked before a probe is touched; after writing, every byte is read back through the \
core and compared (where a region is not readable that way, e.g. external flash, probe-rs \
verifies it through its flash algorithm instead).

Examples:
  glimpse flash --chip STM32H743ZITx --firmware fw.elf --weights model.glim --weights-addr 0x08100000
  glimpse flash --chip RP2350 --firmware fw.elf --weights model.glim --weights-addr 0x10100000 --flash-size 4M --dry-run")]
pub struct FlashArgs {
    /// probe-rs chip name, e.g. STM32H743ZITx or RP2350 (`probe-rs chip list` shows them).
    #[arg(long)]
    pub chip: String,
    /// Firmware ELF; each loadable segment is written at its load (physical) address.
    #[arg(long, value_name = "FW.elf")]
    pub firmware: PathBuf,
    /// Weights image (.glim) to write beside the firmware; checked (checksums too) first.
    #[arg(long, value_name = "MODEL", requires = "weights_addr")]
    pub weights: Option<PathBuf>,
    /// Flash address of the weights (hex with 0x, or decimal): the start of an erase
    /// sector, where the firmware expects the image.
    #[arg(long, value_name = "ADDR", requires = "weights", value_parser = parse_address)]
    pub weights_addr: Option<u64>,
    /// Flash actually fitted, counted from the start of the weights' region, when the chip's
    /// map is larger (RP2350: the 64 MiB XIP window; a Pico 2 has 4M). Suffixes K, M (x1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub flash_size: Option<u64>,
    /// probe-rs flash algorithm for the weights' region where several could write it
    /// (external flash on some boards; the error lists them).
    #[arg(long, value_name = "NAME")]
    pub flash_algorithm: Option<String>,
    /// Check the layout and let probe-rs plan the write on its fake probe; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Probe to use, as VID:PID or VID:PID:SERIAL (default: the only one connected).
    #[arg(long, value_name = "SELECTOR")]
    pub probe: Option<String>,
    /// Leave the core halted after writing instead of resetting it into the new firmware.
    #[arg(long)]
    pub no_reset: bool,
}

/// An address: `0x`-prefixed hex or decimal, `_` allowed as a separator.
pub fn parse_address(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not an address (0x-prefixed hex or decimal)"))
}

/// A byte count: an address-style number with an optional K/KiB or M/MiB suffix (binary).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let (digits, unit) = [
        ("KIB", 1u64 << 10),
        ("MIB", 1 << 20),
        ("K", 1 << 10),
        ("M", 1 << 20),
    ]
    .into_iter()
    .find_map(|(suffix, unit)| upper.strip_suffix(suffix).map(|d| (d.trim(), unit)))
    .unwrap_or((upper.as_str(), 1));
    let n = parse_address(&digits.to_ascii_lowercase())
        .map_err(|_| format!("{s:?} is not a size (e.g. 4M, 512K, 0x400000)"))?;
    n.checked_mul(unit)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

/// Run `glimpse flash`.
#[cfg(feature = "flash")]
pub fn run(a: &FlashArgs) -> anyhow::Result<ExitCode> {
    if a.dry_run {
        let plan = {
            // Best-effort: fails (and lets the chatter through) when stdout is already
            // redirected this way.
            let _quiet = gag::Gag::stdout().ok();
            dry_run(a)?
        };
        print!("{plan}");
        println!("dry run: probe-rs planned the write on its fake probe; nothing was written");
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = write(a, &Lister::new(), |line| eprintln!("{line}"))?;
    print!("{}", outcome.plan);
    let how = if outcome.algorithm_verify {
        " (and probe-rs verified pages through the flash algorithm)"
    } else {
        ""
    };
    println!(
        "written with {}; read back {} bytes, all equal{how}",
        outcome.probe, outcome.read_back
    );
    println!(
        "{}",
        if outcome.reset {
            "core reset: the new firmware is running"
        } else {
            "core left halted (--no-reset)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Run `glimpse flash` (this build has no probe-rs: say how to get it).
#[cfg(not(feature = "flash"))]
pub fn run(_: &FlashArgs) -> anyhow::Result<ExitCode> {
    Err(anyhow::anyhow!(NOT_BUILT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_hex_and_decimal() {
        assert_eq!(parse_address("0x0810_0000"), Ok(0x0810_0000));
        assert_eq!(parse_address("0X10"), Ok(16));
        assert_eq!(parse_address("4096"), Ok(4096));
        assert!(parse_address("0x").is_err());
        assert!(parse_address("08100000h").is_err());
        assert!(parse_address("-1").is_err());
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("0x400000"), Ok(4 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("0").is_err());
        assert!(parse_size("4G").is_err());
        assert!(parse_size("99999999999999999M").is_err());
    }
}
