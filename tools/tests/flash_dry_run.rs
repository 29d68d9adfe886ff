//! `glimpse flash` without hardware: planned layouts for an STM32H7 and an RP2350, probe-rs's
//! own dry run on its fake probe, every refusal of bad input, the no-probe error, and
//! readback verification against mocked target memory.
//!
//! Expected geometry comes from the chips' documentation as probe-rs's target files carry
//! it (STM32H7_Series.yaml, RP235x.yaml), not from our output:
//! - STM32H743ZI (RM0433 §4.3): two 1 MiB flash banks, BANK_1 at 0x0800_0000 and BANK_2
//!   at 0x0810_0000, erased in 128 KiB sectors; probe-rs's `stm32h7x_2048` algorithm
//!   programs 1 KiB pages.
//! - RP2350 (datasheet §4.4, §5.1): external QSPI flash through the XIP window at
//!   0x1000_0000, which probe-rs maps as 64 MiB; erased in 4 KiB sectors, programmed in
//!   4 KiB pages by its algorithm.

#![cfg(feature = "flash")]

mod flash_common;

use std::process::Command;

use flash_common::{Files, Seg, image, noise, s};
use glimpse_tools::flash::{
    FlashError, Lister, RegionKind, dry_run, plan, read_segments, verify_readback, write,
};
use probe_rs::integration::{FakeProbe, ProbeLister};
use probe_rs::probe::list::ProbeListItem;
use probe_rs::probe::{DebugProbeError, DebugProbeSelector, Probe};
use probe_rs::test::MockMemory;
use probe_rs::{Permissions, Session};

const H7: &str = "STM32H743ZITx";
const RP: &str = "RP2350";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A small Cortex-M firmware at `base`: vector table, code, and `.data` stored in flash
/// right after the code but run from `ram`.
fn firmware(base: u32, ram: u32) -> Vec<Seg> {
    vec![
        Seg::at(".vector_table", base, noise(1, 0x400)),
        Seg::at(".text", base + 0x400, noise(2, 0x1800)),
        Seg {
            name: ".data",
            load: base + 0x1c00,
            run: ram,
            data: noise(3, 0x100),
        },
    ]
}

#[test]
fn stm32h7_weights_in_bank_2() {
    let img = image(8 * 1024);
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), Some(&img));
    let p = plan(&f.args(H7, Some(0x0810_0000))).unwrap();

    assert_eq!(p.chip, H7);
    // `.data` is written where it is stored (its load address), not where it runs.
    let ranges: Vec<_> = p.firmware.iter().map(|s| s.range.clone()).collect();
    assert_eq!(
        ranges,
        vec![
            0x0800_0000..0x0800_0400,
            0x0800_0400..0x0800_1c00,
            0x0800_1c00..0x0800_1d00
        ]
    );
    for seg in &p.firmware {
        assert_eq!(seg.regions.len(), 1);
        assert_eq!(seg.regions[0].name, "BANK_1");
        assert_eq!(seg.regions[0].kind, RegionKind::Flash);
    }
    assert_eq!(p.firmware[1].sections, vec![".text".to_string()]);

    let w = p.weights.as_ref().unwrap();
    assert_eq!(w.range, 0x0810_0000..0x0810_0000 + img.len() as u64);
    assert_eq!(w.region.name, "BANK_2");
    assert_eq!(w.region.range, 0x0810_0000..0x0820_0000);
    assert_eq!(w.usable_end, 0x0820_0000);
    assert_eq!(w.algorithm, "stm32h7x_2048");
    assert_eq!(w.sector_size, 128 * KIB);
    assert_eq!(w.page_size, KIB);
    assert_eq!(w.erase, 0x0810_0000..0x0812_0000);
    assert_eq!(w.sectors, 1);
    assert_eq!(w.model, "flash-test");
    assert_eq!(w.tensors, 1);

    // probe-rs itself accepts the same layout on its fake probe.
    assert_eq!(dry_run(&f.args(H7, Some(0x0810_0000))).unwrap(), p);
}

#[test]
fn stm32h7_weights_after_firmware_in_bank_1_span_sectors() {
    // 200 KiB of payload: more than one 128 KiB sector, so two get erased.
    let img = image(200 * 1024);
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), Some(&img));
    let args = f.args(H7, Some(0x0802_0000));
    let w = plan(&args).unwrap().weights.unwrap();
    assert_eq!(w.region.name, "BANK_1");
    assert_eq!(w.erase, 0x0802_0000..0x0806_0000);
    assert_eq!(w.sectors, 2);
    dry_run(&args).unwrap();
}

#[test]
fn firmware_alone_is_planned_and_dry_run() {
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), None);
    let args = f.args(H7, None);
    let p = dry_run(&args).unwrap();
    assert!(p.weights.is_none());
    assert_eq!(p.firmware.len(), 3);
}

#[test]
fn rp2350_weights_in_xip_flash() {
    let img = image(40 * 1024);
    let f = Files::new(&firmware(0x1000_0000, 0x2000_0000), Some(&img));
    let mut args = f.args(RP, Some(0x1010_0000));
    args.flash_size = Some(4 * MIB);
    let p = plan(&args).unwrap();
    assert_eq!(p.chip, "RP235x");
    let w = p.weights.as_ref().unwrap();
    assert_eq!(w.region.range, 0x1000_0000..0x1400_0000);
    assert_eq!(
        w.usable_end, 0x1040_0000,
        "--flash-size caps the XIP window"
    );
    assert_eq!(w.sector_size, 4 * KIB);
    assert_eq!(w.page_size, 4 * KIB);
    // 40 KiB of payload plus the header: 11 sectors of 4 KiB.
    let sectors = (img.len() as u64).div_ceil(4 * KIB);
    assert_eq!(w.sectors, sectors);
    assert_eq!(w.erase, 0x1010_0000..0x1010_0000 + sectors * 4 * KIB);
    assert_eq!(dry_run(&args).unwrap(), p);
}

#[test]
fn weights_must_fit_one_region() {
    // 256 KiB starting one sector before the end of BANK_1: BANK_2 follows directly, but
    // the image must sit in one region (a firmware reads it as one slice of one bank).
    let img = image(256 * 1024);
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), Some(&img));
    match plan(&f.args(H7, Some(0x080e_0000))) {
        Err(FlashError::WeightsTooBig {
            len,
            region,
            end,
            available,
            capped,
            ..
        }) => {
            assert_eq!(len, img.len() as u64);
            assert_eq!(region, "BANK_1");
            assert_eq!(end, 0x0810_0000);
            assert_eq!(available, 128 * KIB);
            assert!(!capped);
        }
        other => panic!("expected WeightsTooBig, got {other:?}"),
    }
}

#[test]
fn flash_size_limits_the_rp2350_window() {
    let img = image(64 * 1024);
    let f = Files::new(&firmware(0x1000_0000, 0x2000_0000), Some(&img));
    let mut args = f.args(RP, Some(0x103f_0000));
    args.flash_size = Some(4 * MIB);
    match plan(&args) {
        Err(e @ FlashError::WeightsTooBig { .. }) => {
            let FlashError::WeightsTooBig {
                end,
                available,
                capped,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(*end, 0x1040_0000);
            assert_eq!(*available, 64 * KIB);
            assert!(*capped);
            assert!(e.to_string().contains("--flash-size"), "{e}");
        }
        other => panic!("expected WeightsTooBig, got {other:?}"),
    }
    // Without the cap the same address is fine: the map has 64 MiB there.
    args.flash_size = None;
    plan(&args).unwrap();
    args.flash_size = Some(128 * MIB);
    assert!(matches!(
        plan(&args),
        Err(FlashError::FlashSizeTooLarge { .. })
    ));
}

#[test]
fn weights_overlapping_firmware_are_refused() {
    let mut fw = firmware(0x0800_0000, 0x2400_0000);
    fw.push(Seg::at(".rodata_hi", 0x0802_0100, noise(4, 0x200)));
    let f = Files::new(&fw, Some(&image(4096)));
    match plan(&f.args(H7, Some(0x0802_0000))) {
        Err(FlashError::Overlap {
            segment, sections, ..
        }) => {
            assert_eq!(segment, 0x0802_0100..0x0802_0300);
            assert_eq!(sections, vec![".rodata_hi".to_string()]);
        }
        other => panic!("expected Overlap, got {other:?}"),
    }
}

#[test]
fn weights_sharing_a_sector_with_firmware_are_refused() {
    // The firmware segment is past the weights' last byte but inside the 128 KiB sector
    // that erasing for the weights wipes.
    let mut fw = firmware(0x0800_0000, 0x2400_0000);
    fw.push(Seg::at(".rodata_hi", 0x0803_0000, noise(4, 0x200)));
    let f = Files::new(&fw, Some(&image(4096)));
    match plan(&f.args(H7, Some(0x0802_0000))) {
        Err(FlashError::SharesSector {
            sector, segment, ..
        }) => {
            assert_eq!(sector, 0x0802_0000..0x0804_0000);
            assert_eq!(segment, 0x0803_0000..0x0803_0200);
        }
        other => panic!("expected SharesSector, got {other:?}"),
    }
}

#[test]
fn misaligned_addresses_name_the_alignment_needed() {
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), Some(&image(4096)));
    // 64-byte aligned but not a sector start.
    let e = plan(&f.args(H7, Some(0x0810_0040))).unwrap_err();
    match &e {
        FlashError::Misaligned {
            sector_size,
            page_size,
            image_align,
            base_align,
            nearest,
            region,
            ..
        } => {
            assert_eq!(*sector_size, 128 * KIB);
            assert_eq!(*page_size, KIB);
            assert_eq!(*image_align, 64);
            assert_eq!(*base_align, 16);
            assert_eq!(region, "BANK_2");
            assert_eq!(nearest, &vec![0x0810_0000, 0x0812_0000]);
        }
        other => panic!("expected Misaligned, got {other:?}"),
    }
    let msg = e.to_string();
    for needle in ["128 KiB", "1 KiB", "64", "0x08100000", "0x08120000"] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }

    let f = Files::new(&firmware(0x1000_0000, 0x2000_0000), Some(&image(4096)));
    match plan(&f.args(RP, Some(0x1010_0010))) {
        Err(FlashError::Misaligned {
            sector_size,
            nearest,
            ..
        }) => {
            assert_eq!(sector_size, 4 * KIB);
            assert_eq!(nearest, vec![0x1010_0000, 0x1010_1000]);
        }
        other => panic!("expected Misaligned, got {other:?}"),
    }
}

#[test]
fn weights_outside_flash_are_refused() {
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), Some(&image(4096)));
    // AXI SRAM, and the peripheral bus where nothing is mapped.
    for addr in [0x2400_0000, 0x4000_0000] {
        let e = plan(&f.args(H7, Some(addr))).unwrap_err();
        assert!(
            matches!(e, FlashError::WeightsNotInFlash { address, .. } if address == addr),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("BANK_1") && msg.contains("BANK_2"), "{msg}");
    }
}

#[test]
fn external_flash_needs_a_chosen_algorithm() {
    // probe-rs lists board algorithms for QSPI flash at 0x9000_0000 (STM32H747I-DISCO and
    // others) with no default among them, so the user has to name one.
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), Some(&image(4096)));
    let mut args = f.args(H7, Some(0x9000_0000));
    let algo = "mt25tl01g_stm32h747i-disco";
    match plan(&args) {
        Err(e @ FlashError::NoFlashAlgorithm { .. }) => {
            let FlashError::NoFlashAlgorithm { candidates, .. } = &e else {
                unreachable!()
            };
            assert!(candidates.iter().any(|c| c == algo), "{candidates:?}");
            assert!(e.to_string().contains("--flash-algorithm"), "{e}");
        }
        other => panic!("expected NoFlashAlgorithm, got {other:?}"),
    }
    args.flash_algorithm = Some(algo.to_string());
    let p = dry_run(&args).unwrap();
    let w = p.weights.unwrap();
    assert_eq!(w.algorithm, algo);
    assert_eq!(w.range.start, 0x9000_0000);
    assert!(w.region.range.contains(&0x9000_0000));
}

#[test]
fn bad_firmware_is_refused() {
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), Some(&image(4096)));
    let mut args = f.args(H7, Some(0x0810_0000));

    args.firmware = f.path("missing.elf");
    assert!(matches!(plan(&args), Err(FlashError::ReadFirmware { .. })));

    std::fs::write(f.path("fw.bin"), noise(9, 4096)).unwrap();
    args.firmware = f.path("fw.bin");
    assert!(matches!(plan(&args), Err(FlashError::NotElf { .. })));

    // A header that promises program headers past the end of the file.
    let whole = flash_common::elf32(&firmware(0x0800_0000, 0x2400_0000));
    std::fs::write(f.path("cut.elf"), &whole[..60]).unwrap();
    args.firmware = f.path("cut.elf");
    assert!(matches!(plan(&args), Err(FlashError::BadElf { .. })));

    std::fs::write(f.path("empty.elf"), flash_common::elf32(&[])).unwrap();
    args.firmware = f.path("empty.elf");
    assert!(matches!(
        plan(&args),
        Err(FlashError::NoLoadableSegments { .. })
    ));

    // Linked for a part with memory at 0x5000_0000; the H743's map has nothing there.
    std::fs::write(
        f.path("elsewhere.elf"),
        flash_common::elf32(&[Seg::at(".text", 0x5000_0000, noise(5, 64))]),
    )
    .unwrap();
    args.firmware = f.path("elsewhere.elf");
    match plan(&args) {
        Err(FlashError::SegmentOutsideMemory { range, .. }) => {
            assert_eq!(range, 0x5000_0000..0x5000_0040)
        }
        other => panic!("expected SegmentOutsideMemory, got {other:?}"),
    }
}

#[test]
fn bad_weights_are_refused() {
    let img = image(4096);
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), Some(&img));
    let mut args = f.args(H7, Some(0x0810_0000));

    args.weights_addr = None;
    assert!(matches!(plan(&args), Err(FlashError::IncompleteWeights)));
    args.weights_addr = Some(0x0810_0000);

    args.weights = Some(f.path("missing.glim"));
    assert!(matches!(plan(&args), Err(FlashError::BadImage { .. })));

    std::fs::write(f.path("text.glim"), b"not an image at all").unwrap();
    args.weights = Some(f.path("text.glim"));
    assert!(matches!(plan(&args), Err(FlashError::BadImage { .. })));

    // One flipped payload bit: structurally fine, caught by the tensor checksum.
    let mut bent = img.clone();
    let last = bent.len() - 1;
    bent[last] ^= 0x10;
    std::fs::write(f.path("bent.glim"), &bent).unwrap();
    args.weights = Some(f.path("bent.glim"));
    match plan(&args) {
        Err(e @ FlashError::BadImage { .. }) => {
            assert!(e.to_string().to_lowercase().contains("checksum"), "{e}")
        }
        other => panic!("expected BadImage, got {other:?}"),
    }
}

#[test]
fn unknown_chip_suggests_names() {
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), None);
    match plan(&f.args("STM32H743ZIQQ", None)) {
        Err(FlashError::UnknownChip { suggestions, .. }) => {
            assert!(
                suggestions.iter().any(|c| c.starts_with("STM32H743ZI")),
                "{suggestions:?}"
            )
        }
        other => panic!("expected UnknownChip, got {other:?}"),
    }
    match plan(&f.args("STM32H743", None)) {
        Err(FlashError::AmbiguousChip { matches, .. }) => {
            assert!(matches.len() > 1, "{matches:?}");
            let mut unique = matches.clone();
            unique.dedup();
            assert_eq!(unique, matches, "each match once");
        }
        other => panic!("expected AmbiguousChip, got {other:?}"),
    }
}

#[test]
fn segments_are_read_as_probe_rs_reads_them() {
    let fw = firmware(0x0800_0000, 0x2400_0000);
    let f = Files::new(&fw, None);
    let segs = read_segments(&f.firmware).unwrap();
    assert_eq!(segs.len(), fw.len());
    for (got, want) in segs.iter().zip(&fw) {
        assert_eq!(got.address, u64::from(want.load));
        assert_eq!(got.data, want.data);
        assert_eq!(got.sections, vec![want.name.to_string()]);
    }
}

/// A probe lister that finds nothing, as on a machine with no probe plugged in.
#[derive(Debug)]
struct NoProbes;

impl ProbeLister for NoProbes {
    fn open(&self, _: &DebugProbeSelector) -> Result<Probe, DebugProbeError> {
        Err(DebugProbeError::ProbeCouldNotBeCreated(
            probe_rs::probe::ProbeCreationError::NotFound,
        ))
    }

    fn list_with_access(&self, _: Option<&DebugProbeSelector>) -> Vec<ProbeListItem> {
        Vec::new()
    }
}

#[test]
fn no_probe_is_a_clear_error() {
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), Some(&image(4096)));
    let mut args = f.args(H7, Some(0x0810_0000));
    args.dry_run = false;
    let mut lines = Vec::new();
    let e = write(&args, &Lister::with_lister(Box::new(NoProbes)), |l| {
        lines.push(l.to_string())
    })
    .unwrap_err();
    assert!(matches!(e, FlashError::NoProbe), "{e:?}");
    assert!(e.to_string().contains("--dry-run"), "{e}");
    assert!(lines.is_empty(), "nothing should have started: {lines:?}");

    // Bad input still wins over the missing probe: it is checked first.
    let e = write(
        &f.args(H7, Some(0x0810_0040)),
        &Lister::with_lister(Box::new(NoProbes)),
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, FlashError::Misaligned { .. }), "{e:?}");

    args.probe = Some("not-a-selector".to_string());
    let e = write(&args, &Lister::with_lister(Box::new(NoProbes)), |_| {}).unwrap_err();
    assert!(matches!(e, FlashError::BadProbeSelector { .. }), "{e:?}");
}

#[test]
fn readback_finds_the_first_wrong_byte() {
    let data = noise(11, 3 * 64 * 1024 + 100); // several readback chunks and a tail
    let base = 0x0810_0000;
    let mut mem = MockMemory::new();
    mem.add_range(base, data.clone());
    verify_readback(&mut mem, "weights", base, &data).unwrap();

    let mut wrong = data.clone();
    let at = 64 * 1024 + 5; // in the second chunk
    wrong[at] ^= 0x40;
    wrong[at + 70_000] ^= 0x01; // and one more, later
    let mut mem = MockMemory::new();
    mem.add_range(base, wrong.clone());
    match verify_readback(&mut mem, "weights", base, &data) {
        Err(FlashError::VerifyMismatch {
            address,
            expected,
            found,
            mismatches,
            range,
            what,
        }) => {
            assert_eq!(address, base + at as u64);
            assert_eq!(expected, data[at]);
            assert_eq!(found, wrong[at]);
            assert_eq!(mismatches, 2);
            assert_eq!(range, base..base + data.len() as u64);
            assert_eq!(what, "weights");
        }
        other => panic!("expected VerifyMismatch, got {other:?}"),
    }
}

#[test]
fn readback_through_the_fake_probe_core() {
    // probe-rs's mocked core serves the firmware ELF's segments and zeros elsewhere, as
    // if the firmware had been written and the weights had not.
    let mut fw = firmware(0x0800_0000, 0x2400_0000);
    // The mock treats a segment's last bytes as outside it (reading zeros); end on zeros
    // so that quirk reads what was written.
    let n = fw[1].data.len();
    fw[1].data[n - 8..].fill(0);
    let img = image(4096);
    let f = Files::new(&fw, Some(&img));
    let mut session: Session = FakeProbe::with_mocked_core_and_binary(&f.firmware)
        .into_probe()
        .attach(H7, Permissions::default())
        .unwrap();
    let mut core = session.core(0).unwrap();

    verify_readback(&mut core, "firmware", 0x0800_0400, &fw[1].data).unwrap();
    match verify_readback(&mut core, "weights", 0x0810_0000, &img) {
        Err(FlashError::VerifyMismatch {
            address,
            expected,
            found,
            mismatches,
            ..
        }) => {
            let first = img.iter().position(|&b| b != 0).unwrap();
            assert_eq!(address, 0x0810_0000 + first as u64);
            assert_eq!(expected, img[first]);
            assert_eq!(found, 0);
            assert_eq!(mismatches, img.iter().filter(|&&b| b != 0).count() as u64);
        }
        other => panic!("expected VerifyMismatch, got {other:?}"),
    }
}

fn glimpse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .output()
        .expect("the glimpse binary runs")
}

#[test]
fn cli_dry_run_prints_the_plan_only() {
    let f = Files::new(&firmware(0x0800_0000, 0x2400_0000), Some(&image(4096)));
    let o = glimpse(&[
        "flash",
        "--chip",
        H7,
        "--firmware",
        s(&f.firmware),
        "--weights",
        s(&f.weights),
        "--weights-addr",
        "0x0810_0000",
        "--dry-run",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("BANK_2") && out.contains("stm32h7x_2048"),
        "{out}"
    );
    assert!(out.contains("nothing was written"), "{out}");
    // The fake probe's register chatter must not reach the user.
    assert!(!out.contains("DHCSR") && !out.contains("Read 0x"), "{out}");

    let o = glimpse(&[
        "flash",
        "--chip",
        H7,
        "--firmware",
        s(&f.firmware),
        "--weights",
        s(&f.weights),
        "--weights-addr",
        "0x08100040",
        "--dry-run",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("misaligned") && err.contains("128 KiB"),
        "{err}"
    );

    // --weights needs --weights-addr (clap refuses before anything runs).
    let o = glimpse(&[
        "flash",
        "--chip",
        H7,
        "--firmware",
        s(&f.firmware),
        "--weights",
        s(&f.weights),
        "--dry-run",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--weights-addr"));
}
