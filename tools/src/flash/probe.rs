//! Carrying a checked plan out through probe-rs: a dry run on probe-rs's fake probe, or a
//! real write through a connected probe followed by a byte-for-byte readback.

use std::fs::File;

use probe_rs::config::MemoryRegion;
use probe_rs::flashing::{
    DownloadOptions, ElfLoader, ElfOptions, FlashLoader, FlashProgress, ProgressEvent,
};
use probe_rs::integration::FakeProbe;
use probe_rs::probe::DebugProbeSelector;
use probe_rs::probe::list::{Accessibility, Lister};
use probe_rs::{MemoryInterface, Permissions, Session, Target};

use super::FlashArgs;
use super::error::{FlashError, range_hex};
use super::plan::{FlashPlan, Prepared, algorithm_for, prepare};

/// Bytes read back per probe transfer: large enough to stream, small enough that a
/// mismatch report does not wait for a whole multi-megabyte image.
const READBACK_CHUNK: usize = 64 * 1024;

/// What a real write did.
#[derive(Clone, Debug)]
pub struct FlashOutcome {
    /// The layout that was written.
    pub plan: FlashPlan,
    /// The probe used.
    pub probe: String,
    /// Bytes compared after writing through the core's memory bus.
    pub read_back: u64,
    /// Whether probe-rs also verified pages with the flash algorithm (regions whose
    /// contents are not memory-mapped).
    pub algorithm_verify: bool,
    /// Whether the core was reset to run the new firmware.
    pub reset: bool,
}

/// Check everything and let probe-rs plan the write on its fake probe; nothing is written
/// and no probe is needed.
///
/// The fake probe's mocked core narrates its register accesses on stdout (while
/// attaching and when the session drops); the `glimpse` binary silences that around this
/// call.
pub fn dry_run(args: &FlashArgs) -> Result<FlashPlan, FlashError> {
    let prepared = prepare(args)?;
    let mut session = FakeProbe::with_mocked_core()
        .into_probe()
        .attach(prepared.target.clone(), Permissions::default())
        .map_err(|e| FlashError::Probe {
            what: "attaching probe-rs's fake probe",
            source: Box::new(e),
        })?;
    let loader = stage(&mut session, &prepared)?;
    let mut options = DownloadOptions::default();
    options.dry_run = true;
    options.preferred_algos = args.flash_algorithm.iter().cloned().collect();
    loader
        .commit(&mut session, options)
        .map_err(|e| FlashError::Flash {
            source: Box::new(e),
        })?;
    Ok(prepared.plan)
}

/// Check everything, then erase, program and read back through the probe `lister` finds
/// (or the one `--probe` selects). `report` receives one line per phase.
pub fn write(
    args: &FlashArgs,
    lister: &Lister,
    mut report: impl FnMut(&str),
) -> Result<FlashOutcome, FlashError> {
    let prepared = prepare(args)?;
    let probe = open_probe(lister, args.probe.as_deref())?;
    let probe_name = probe.get_name();
    report(&format!("probe     {probe_name}"));
    let mut session = probe
        .attach(prepared.target.clone(), Permissions::default())
        .map_err(|e| FlashError::Probe {
            what: "attaching to the chip",
            source: Box::new(e),
        })?;
    let loader = stage(&mut session, &prepared)?;

    let chunks = written_chunks(&prepared);
    let mut algorithm_verify = false;
    let mut readable = Vec::with_capacity(chunks.len());
    for (what, address, bytes) in chunks {
        match readback_core(&prepared.target, address, args.flash_algorithm.as_deref()) {
            Some(core) => readable.push((what, address, bytes, core)),
            // Contents reachable only through the flash algorithm: let probe-rs verify.
            None => algorithm_verify = true,
        }
    }

    let mut options = DownloadOptions::default();
    options.verify = algorithm_verify;
    options.preferred_algos = args.flash_algorithm.iter().cloned().collect();
    options.progress = FlashProgress::new(|event| match event {
        ProgressEvent::Started(op) => report(&format!("{op:?} ...")),
        ProgressEvent::Finished(op) => report(&format!("{op:?} done")),
        ProgressEvent::Failed(op) => report(&format!("{op:?} FAILED")),
        _ => {}
    });
    loader
        .commit(&mut session, options)
        .map_err(|e| FlashError::Flash {
            source: Box::new(e),
        })?;

    let mut read_back = 0;
    for (what, address, bytes, core) in readable {
        let mut core = session.core(core).map_err(|e| FlashError::Probe {
            what: "opening the core for readback",
            source: Box::new(e),
        })?;
        verify_readback(&mut core, what, address, bytes)?;
        read_back += bytes.len() as u64;
    }

    let reset = !args.no_reset;
    if reset {
        session
            .core(0)
            .and_then(|mut core| core.reset())
            .map_err(|e| FlashError::Probe {
                what: "resetting the core",
                source: Box::new(e),
            })?;
    }
    Ok(FlashOutcome {
        plan: prepared.plan,
        probe: probe_name,
        read_back,
        algorithm_verify,
        reset,
    })
}

/// Compare `expected` with what `mem` holds at `address`, reading it in chunks; any
/// difference is an error naming the first differing address and how many bytes differ.
pub fn verify_readback<M: MemoryInterface>(
    mem: &mut M,
    what: &'static str,
    address: u64,
    expected: &[u8],
) -> Result<(), FlashError> {
    let mut buf = vec![0u8; READBACK_CHUNK.min(expected.len())];
    let mut first: Option<(u64, u8, u8)> = None;
    let mut mismatches = 0u64;
    let mut at = address;
    for want in expected.chunks(READBACK_CHUNK) {
        let got = &mut buf[..want.len()];
        mem.read(at, got).map_err(|e| FlashError::Probe {
            what: "reading back",
            source: Box::new(e),
        })?;
        for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
            if w != g {
                mismatches += 1;
                first.get_or_insert((at + i as u64, *w, *g));
            }
        }
        at += want.len() as u64;
    }
    match first {
        None => Ok(()),
        Some((addr, expected_byte, found)) => Err(FlashError::VerifyMismatch {
            what,
            range: address..address + expected.len() as u64,
            address: addr,
            expected: expected_byte,
            found,
            mismatches,
        }),
    }
}

/// Firmware and weights staged in probe-rs's loader, after checking that probe-rs read
/// the ELF exactly as the plan did.
fn stage(session: &mut Session, prepared: &Prepared) -> Result<FlashLoader, FlashError> {
    let fw = &prepared.plan.firmware_path;
    let mut loader = session.target().flash_loader();
    let mut file = File::open(fw).map_err(|source| FlashError::ReadFirmware {
        path: fw.clone(),
        source,
    })?;
    loader
        .load_image(session, &mut file, ElfLoader(ElfOptions::default()), None)
        .map_err(|e| FlashError::Flash {
            source: Box::new(e),
        })?;

    let theirs = merged(loader.data().map(|(a, d)| (a, d.to_vec())));
    let ours = merged(
        prepared
            .segments
            .iter()
            .map(|s| (s.address, s.data.clone())),
    );
    if theirs != ours {
        let show = |c: &[(u64, Vec<u8>)]| {
            c.iter()
                .map(|(a, d)| range_hex(&(*a..*a + d.len() as u64)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(FlashError::PlanMismatch {
            probe_rs: show(&theirs),
            planned: show(&ours),
        });
    }

    if let (Some(w), Some(image)) = (&prepared.plan.weights, &prepared.weights) {
        loader
            .add_data(w.range.start, image.bytes())
            .map_err(|e| FlashError::Flash {
                source: Box::new(e),
            })?;
    }
    Ok(loader)
}

/// Chunks sorted by address with touching ones joined, so two descriptions of the same
/// bytes compare equal however they were split.
fn merged(chunks: impl Iterator<Item = (u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
    let mut v: Vec<_> = chunks.filter(|(_, d)| !d.is_empty()).collect();
    v.sort_by_key(|(a, _)| *a);
    let mut out: Vec<(u64, Vec<u8>)> = Vec::with_capacity(v.len());
    for (a, d) in v {
        match out.last_mut() {
            Some((pa, pd)) if *pa + pd.len() as u64 == a => pd.extend_from_slice(&d),
            _ => out.push((a, d)),
        }
    }
    out
}

/// Everything that will be written, labelled for messages.
fn written_chunks(prepared: &Prepared) -> Vec<(&'static str, u64, &[u8])> {
    let mut out: Vec<_> = prepared
        .segments
        .iter()
        .map(|s| ("firmware", s.address, s.data.as_slice()))
        .collect();
    if let (Some(w), Some(image)) = (&prepared.plan.weights, &prepared.weights) {
        out.push(("weights", w.range.start, image.bytes()));
    }
    out
}

/// The core through which `address` reads back as plain memory, or None when only the
/// region's flash algorithm can read it.
fn readback_core(target: &Target, address: u64, preferred: Option<&str>) -> Option<usize> {
    let region = target.memory_map.iter().find(|r| r.contains(address))?;
    if let MemoryRegion::Nvm(nvm) = region {
        // probe-rs marks regions it synthesised for external-flash algorithms unreadable:
        // they appear in the address space only once the firmware sets up the interface.
        let algo = algorithm_for(target, nvm, preferred).ok()?;
        if algo.pc_read.is_some() || !nvm.is_readable() {
            return None;
        }
    }
    let core = region.cores().first()?;
    target.core_index_by_name(core)
}

fn open_probe(
    lister: &Lister,
    selector: Option<&str>,
) -> Result<probe_rs::probe::Probe, FlashError> {
    let selector: Option<DebugProbeSelector> = selector
        .map(|s| {
            s.parse::<DebugProbeSelector>()
                .map_err(|e| FlashError::BadProbeSelector {
                    given: s.to_string(),
                    reason: e.to_string(),
                })
        })
        .transpose()?;
    let found = lister.list_with_access(selector.as_ref());
    let list = |items: &[&probe_rs::probe::list::ProbeListItem]| {
        items
            .iter()
            .map(|i| format!("  {}", i.info))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let all: Vec<_> = found.iter().collect();
    let usable: Vec<_> = found
        .iter()
        .filter(|i| matches!(i.accessibility, Accessibility::Accessible))
        .collect();
    match usable.as_slice() {
        [] if all.is_empty() => Err(FlashError::NoProbe),
        [] => Err(FlashError::ProbeNotAccessible { probes: list(&all) }),
        [one] => lister.open(&one.info).map_err(|e| FlashError::Probe {
            what: "opening the debug probe",
            source: Box::new(e),
        }),
        several => Err(FlashError::SeveralProbes {
            probes: list(several),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::merged;

    #[test]
    fn merging_joins_touching_chunks_in_any_order() {
        let a = merged(
            [
                (0x20, vec![3, 4]),
                (0x10, vec![1]),
                (0x11, vec![2]),
                (0x30, vec![]),
            ]
            .into_iter(),
        );
        let b = merged([(0x10, vec![1, 2]), (0x20, vec![3]), (0x21, vec![4])].into_iter());
        assert_eq!(a, vec![(0x10, vec![1, 2]), (0x20, vec![3, 4])]);
        assert_eq!(a, b);
        // A gap keeps chunks apart.
        assert_ne!(a, merged([(0x10, vec![1, 2, 3, 4])].into_iter()));
    }
}
