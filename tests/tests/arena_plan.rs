//! Sizing and running are one code: phase by phase, the arena high-water mark of a run
//! equals what its plan says, to the byte, on one task and on a thread pool (a run's
//! bytes depend on the shapes alone, never on the executor or on what the region has to
//! spare).
//!
//! Each phase runs in an arena of exactly its planned size from an aligned start, so the
//! peak counts the phase's own buffers and nothing else. The vision fixtures cover every
//! layer kind (stem, RepMixer and attention blocks, downsamplers, positional encodings,
//! the head); Q8_0 and f16 weights cover both linear scratch shapes and the conv tap
//! buffers; the tiny FastVLM covers the projector and the decoder state.

mod decoder_common;
mod vision_common;

use glimpse_core::Model;
use glimpse_core::arena::{ALIGN, Arena};
use glimpse_core::decoder::{Decoder, DecoderState, Input, KvFormat, Logits};
use glimpse_core::kernels::Ctx;
use glimpse_core::projector::Projector;
use glimpse_core::vision::VisionEncoder;
use glimpse_hal::{Executor, Sequential};
use glimpse_host::ThreadPool;
use glimpse_tests::workspace_root;
use glimpse_tools::{KeepArg, QuantArg};

/// `n` zeroed bytes starting on an [`ALIGN`] boundary (inside a larger allocation).
struct Region {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Region {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Region {
            storage,
            start,
            len,
        }
    }

    fn arena(&mut self) -> Arena<'_> {
        Arena::new(&mut self.storage[self.start..self.start + self.len])
    }
}

fn executors() -> Vec<Box<dyn Executor>> {
    vec![
        Box::new(Sequential),
        Box::new(ThreadPool::new(3).expect("thread pool")),
    ]
}

/// Resolution a fixture is named for (`mci3_192` -> 192).
fn resolution_of(name: &str) -> usize {
    name.rsplit('_')
        .next()
        .and_then(|r| r.parse().ok())
        .expect("fixture name ends in its resolution")
}

/// Stem, stages and head of `image` at `res`, each in a region of exactly its planned
/// size; returns the features so runs can be compared.
fn encode_in_planned_regions(image: &Model<'_>, res: usize, exec: &mut dyn Executor) -> Vec<f32> {
    let enc = VisionEncoder::new(image).expect("vision encoder");
    let plan = enc.plan(res).expect("plan");
    let mut ctx = Ctx::new(exec);
    let pixels: Vec<f32> = (0..3 * res * res)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let [a, b] = plan.buffer_floats;
    let (mut first, mut second) = (vec![0f32; a], vec![0f32; b]);

    let mut stem = Region::new(plan.stem_work_bytes);
    let mut arena = stem.arena();
    let shape = enc
        .stem(&mut ctx, &pixels, res, &mut first, &mut arena)
        .expect("stem");
    assert_eq!(arena.peak(), plan.stem_work_bytes, "stem at {res}");

    let mut stages = Region::new(plan.stages_work_bytes);
    let mut arena = stages.arena();
    let (shape, last) = enc
        .stages(
            &mut ctx,
            &mut first,
            &mut second,
            shape,
            &mut arena,
            &mut |_, _, _| {},
        )
        .expect("stages");
    assert_eq!(arena.peak(), plan.stages_work_bytes, "stages at {res}");
    assert_eq!((last, shape), (plan.final_buffer, plan.final_shape));

    let mut head = Region::new(plan.head_work_bytes);
    let mut arena = head.arena();
    let mut features = vec![0f32; plan.tokens * plan.out_dim];
    let x = if last == 0 { &first } else { &second };
    enc.head(&mut ctx, x, shape, &mut arena, &mut features)
        .expect("head");
    assert_eq!(arena.peak(), plan.head_work_bytes, "head at {res}");
    assert_eq!(
        plan.work_bytes,
        plan.stem_work_bytes
            .max(plan.stages_work_bytes)
            .max(plan.head_work_bytes)
    );
    features
}

#[test]
fn every_vision_phase_peaks_at_its_plan() {
    for name in vision_common::CONFIGS {
        let dir = vision_common::fixture_dir(name);
        let res = resolution_of(name);
        for (quant, keep) in [
            (QuantArg::Q8_0, KeepArg::F32),
            (QuantArg::Q8_0, KeepArg::F16),
        ] {
            let bytes = vision_common::convert_fixture(&dir, quant, keep);
            let image = Model::parse(bytes.as_slice()).expect("image");
            let mut runs = Vec::new();
            for mut exec in executors() {
                // Two resolutions: the fixture's and one stride larger, so the tiling
                // (rows per tile, attention copies) is exercised at two sizes.
                let stride = VisionEncoder::new(&image).expect("encoder").stride();
                for r in [res, res + stride] {
                    runs.push((r, encode_in_planned_regions(&image, r, exec.as_mut())));
                }
            }
            // The executor changes neither the bytes (asserted inside) nor the bits.
            let (one, pool) = runs.split_at(runs.len() / 2);
            for ((r, a), (_, b)) in one.iter().zip(pool) {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{name} {quant:?} at {r}: keep {keep:?}: pool differs from one task"
                );
            }
        }
    }
}

#[test]
fn projector_and_decoder_state_peak_at_their_plan() {
    let dir = workspace_root().join("models").join("tiny-fastvlm");
    let bytes = decoder_common::convert_to_bytes(&dir, QuantArg::Q8_0);
    let image = Model::parse(bytes.as_slice()).expect("image");
    let proj = Projector::new(&image).expect("projector");
    for mut exec in executors() {
        let mut ctx = Ctx::new(exec.as_mut());
        for tokens in [1, 4, 64] {
            let need = proj.padded_bytes(tokens);
            let mut region = Region::new(need);
            let mut arena = region.arena();
            let features = vec![0.25f32; tokens * proj.in_dim()];
            let mut out = vec![0f32; tokens * proj.out_dim()];
            proj.forward_on(&mut ctx, &features, tokens, &mut arena, &mut out)
                .expect("project");
            assert_eq!(arena.peak(), need, "projector, {tokens} tokens");
        }
    }

    let decoder = Decoder::new(&image).expect("decoder");
    let cfg = image.config().decoder.as_ref().expect("decoder config");
    for (max_context, chunk) in [(32, 8), (96, 64)] {
        let need = DecoderState::padded_bytes(cfg, max_context, chunk, KvFormat::F32)
            .expect("decoder plan");
        let mut region = Region::new(need);
        let mut arena = region.arena();
        let mut state =
            DecoderState::with_chunk(&mut arena, &decoder, max_context, chunk).expect("state");
        let ids: Vec<u32> = (0..20).map(|i| 3 + i % 50).collect();
        state
            .forward(Input::Ids(&ids), Logits::Last)
            .expect("prefill");
        state
            .forward(Input::Ids(&[7]), Logits::Last)
            .expect("decode step");
        assert_eq!(arena.peak(), need, "decoder state, context {max_context}");
    }
}
