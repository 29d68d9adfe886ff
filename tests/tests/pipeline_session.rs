//! The Session API's contract on the tiny FastVLM fixture: the arena is exactly what the
//! plan says (one byte less is refused before anything is written, and a run never writes
//! outside it), bad inputs are errors before any work that leave the session as good as
//! new, a VLM without a frame runs text-only, and `glimpse plan` emits the same total.

mod pipeline_common;

use glimpse_core::arena::ALIGN;
use glimpse_core::planner::{ArenaPlan, Buf, Phase, PlanOptions};
use glimpse_core::preprocess::{Frame, FrameError, PixelFormat};
use glimpse_core::session::{ImageInput, LogitsOut, Prompt, Report, Session, SessionOptions};
use glimpse_core::{Error, Model};
use glimpse_hal::{ErrorKind, ErrorType, TokenSink};
use glimpse_tools::plan::{Emit, KvArg, PlanArgs};
use glimpse_tools::run::HostClock;
use glimpse_tools::{KeepArg, QuantArg};
use pipeline_common::*;

/// One question about an optional frame, in a new conversation.
fn ask<S: TokenSink>(
    s: &mut Session<'_, '_, HostClock>,
    frame: Option<Frame<'_>>,
    question: &str,
    sink: &mut S,
) -> Result<Report, Error> {
    s.reset();
    s.run(Prompt::chat(question), frame.map(ImageInput::Frame), sink)
}

/// Generation from ids with an optional picture, in a new conversation.
fn generate_ids<S: TokenSink>(
    s: &mut Session<'_, '_, HostClock>,
    ids: &[u32],
    picture: Option<ImageInput<'_>>,
    sink: &mut S,
) -> Result<Report, Error> {
    s.reset();
    s.run(Prompt::Ids(ids), picture, sink)
}

fn options() -> SessionOptions {
    SessionOptions {
        plan: PlanOptions {
            max_context: 96,
            max_frame_side: 256,
            max_prompt_bytes: 64,
            ..PlanOptions::default()
        },
        ..greedy(6)
    }
}

#[test]
fn the_planned_size_is_exact_and_nothing_outside_it_is_touched() {
    let bytes = converted(QuantArg::F32, KeepArg::F32);
    let image = Model::parse(bytes.as_slice()).unwrap();
    let exp = expected();
    let question = exp["question"].as_str().unwrap();
    let pic = picture();
    let plan = ArenaPlan::new(&image, &options().plan).unwrap();
    let total = plan.total();
    assert_eq!(total % ALIGN, 0);

    // One byte less, aligned: refused with the exact figure, nothing written.
    let mut g = Guarded::new(total - 1, 0);
    let err = Session::new(&image, g.window(), HostClock::new(), options()).unwrap_err();
    assert_eq!(
        err,
        Error::Arena {
            needed: total,
            capacity: total - 1
        }
    );
    assert!(g.untouched());

    // Unaligned by 5: the plan needs the 59 bytes up to the boundary on top.
    let mut g = Guarded::new(total + ALIGN - 5 - 1, 5);
    let err = Session::new(&image, g.window(), HostClock::new(), options()).unwrap_err();
    assert_eq!(
        err,
        Error::Arena {
            needed: total + ALIGN - 5,
            capacity: total + ALIGN - 6
        }
    );

    let reference = {
        let mut g = Guarded::new(total + ALIGN - 5, 5);
        let mut s = Session::new(&image, g.window(), HostClock::new(), options()).unwrap();
        let mut sink = VecSink::default();
        ask(&mut s, Some(pic.frame()), question, &mut sink).unwrap();
        drop(s);
        assert!(g.guards_intact());
        sink.tokens
    };

    // Exactly the planned bytes, aligned: the full pipeline runs, and the guard bytes on
    // both sides of the arena are intact afterwards.
    let mut g = Guarded::new(total, 0);
    let mut s = Session::new(&image, g.window(), HostClock::new(), options()).unwrap();
    assert_eq!(s.plan().total(), total);
    let mut sink = VecSink::default();
    let r = ask(&mut s, Some(pic.frame()), question, &mut sink).unwrap();
    assert_eq!(r.generated, 6);
    assert!(r.image_tokens > 0);
    assert_eq!(sink.tokens, reference);
    assert_eq!(sink.tokens, ids(&exp["greedy"])[..6].to_vec());
    let t = r.timings;
    // Timings come from the clock in order: each step is inside the TTFT.
    assert!(t.preprocess_us + t.encoder_us + t.projector_us + t.prefill_us <= t.ttft_us);
    drop(s);
    assert!(g.guards_intact(), "the run wrote outside its arena");
}

#[test]
fn the_plan_keeps_live_buffers_apart_and_reuses_dead_ones() {
    let bytes = converted(QuantArg::F32, KeepArg::F32);
    let image = Model::parse(bytes.as_slice()).unwrap();
    for opts in [
        options().plan,
        PlanOptions {
            kv: glimpse_core::decoder::KvFormat::F32,
            sampling: true,
            ..options().plan
        },
        PlanOptions {
            vision: false,
            ..options().plan
        },
    ] {
        let plan = ArenaPlan::new(&image, &opts).unwrap();
        let bufs: Vec<_> = plan.buffers().collect();
        for (i, (a, pa)) in bufs.iter().enumerate() {
            assert!(pa.end() <= plan.total(), "{a:?} past the total");
            for (b, pb) in &bufs[i + 1..] {
                assert!(
                    !(pa.meets(pb) && pa.overlaps(pb)),
                    "{a:?} and {b:?} are live together and overlap"
                );
            }
        }
        // No phase can do with less than the sum of what is live in it, and the plan
        // is the largest phase exactly or close to it (greedy placement).
        let peak = Phase::ALL
            .iter()
            .map(|&p| plan.live_bytes(p))
            .max()
            .unwrap();
        assert!(plan.total() >= peak);
        let sum: usize = bufs.iter().map(|(_, p)| p.size()).sum();
        assert!(plan.total() < sum, "no buffer shares bytes with another");
        if opts.vision {
            // The pixels die with the stem and the second activation buffer is born
            // after it: they may share bytes (spec'd reuse), but must not both be live.
            let px = plan.placement(Buf::Pixels).unwrap();
            let second = plan.placement(Buf::VisionSecond).unwrap();
            assert!(!px.meets(second));
        } else {
            assert!(plan.placement(Buf::Pixels).is_none());
        }
    }
    let vlm = ArenaPlan::new(&image, &options().plan).unwrap();
    let text = ArenaPlan::new(
        &image,
        &PlanOptions {
            vision: false,
            ..options().plan
        },
    )
    .unwrap();
    assert!(text.total() < vlm.total());
    assert!(!text.has_vision() && text.image_tokens == 0);
}

#[test]
fn bad_inputs_are_errors_before_work_and_leave_the_session_usable() {
    let bytes = converted(QuantArg::F32, KeepArg::F32);
    let image = Model::parse(bytes.as_slice()).unwrap();
    let exp = expected();
    let question = exp["question"].as_str().unwrap();
    let pic = picture();
    let plan = ArenaPlan::new(&image, &options().plan).unwrap();
    let mut arena = vec![0u8; plan.total() + ALIGN];
    let mut s = Session::new(&image, &mut arena, HostClock::new(), options()).unwrap();
    let mut sink = VecSink::default();
    let good = ask(&mut s, Some(pic.frame()), question, &mut sink).unwrap();
    let tokens = sink.tokens.clone();

    let short = &pic.rgb[..pic.rgb.len() - 1];
    let bad_frames = [
        (
            Frame {
                data: short,
                ..pic.frame()
            },
            "short buffer",
        ),
        (
            Frame {
                width: 0,
                ..pic.frame()
            },
            "empty",
        ),
        (
            Frame {
                width: 300,
                height: 2,
                format: PixelFormat::Rgb888,
                data: &[0; 1800],
            },
            "larger than max_frame_side",
        ),
    ];
    for (frame, what) in bad_frames {
        let mut sink = VecSink::default();
        let err = ask(&mut s, Some(frame), question, &mut sink).unwrap_err();
        assert!(matches!(err, Error::Frame(_)), "{what}: {err:?}");
        assert!(sink.tokens.is_empty() && sink.finished == 0, "{what}");
    }
    let err = ask(
        &mut s,
        Some(Frame {
            width: 300,
            height: 2,
            format: PixelFormat::Rgb888,
            data: &[0; 1800],
        }),
        question,
        &mut VecSink::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        Error::Frame(FrameError::TooLarge {
            width: 300,
            height: 2,
            max_side: 256
        })
    );

    // A prompt past the plan's bound, and one that tokenizes past the context.
    let long = "x".repeat(65);
    let err = ask(&mut s, Some(pic.frame()), &long, &mut VecSink::default()).unwrap_err();
    assert!(matches!(err, Error::Length { .. }), "{err:?}");
    let words = "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f";
    let err = ask(&mut s, Some(pic.frame()), words, &mut VecSink::default()).unwrap_err();
    assert!(
        matches!(err, Error::ContextOverflow { max: 96, .. }),
        "{err:?}"
    );

    // Id-level refusals: no image-token id with a picture, the wrong count of them,
    // an id past the vocabulary, pixels of the wrong size, a logits buffer too short.
    let input_ids = ids(&exp["input_ids"]);
    let image_id = exp["image_token_id"].as_u64().unwrap() as u32;
    let text_only: Vec<u32> = input_ids
        .iter()
        .copied()
        .filter(|&t| t != image_id)
        .collect();
    let f = || Some(ImageInput::Frame(pic.frame()));
    assert!(matches!(
        generate_ids(&mut s, &text_only, f(), &mut VecSink::default()),
        Err(Error::Length {
            expected: 9,
            got: 0,
            ..
        })
    ));
    let mut two = input_ids.clone();
    two.retain(|&t| t != image_id);
    two.extend([image_id, 5, image_id]);
    assert!(matches!(
        generate_ids(&mut s, &two, f(), &mut VecSink::default()),
        Err(Error::Length { got: 2, .. })
    ));
    assert!(matches!(
        generate_ids(&mut s, &[1, 2, 10_000], None, &mut VecSink::default()),
        Err(Error::TokenOutOfRange { id: 10_000, .. })
    ));
    assert_eq!(
        generate_ids(&mut s, &[], None, &mut VecSink::default()),
        Err(Error::EmptyInput)
    );
    assert!(matches!(
        s.logits(
            &input_ids,
            Some(ImageInput::Pixels(&[0.5; 12])),
            LogitsOut::Last(&mut [0.0; 320])
        ),
        Err(Error::Length { got: 12, .. })
    ));
    assert!(matches!(
        s.logits(&input_ids, f(), LogitsOut::Last(&mut [0.0; 3])),
        Err(Error::Length { got: 3, .. })
    ));

    // None of it left a trace: the same question gives the same answer.
    let mut sink = VecSink::default();
    let again = ask(&mut s, Some(pic.frame()), question, &mut sink).unwrap();
    assert_eq!(sink.tokens, tokens);
    assert_eq!(
        (again.prompt_positions, again.generated),
        (good.prompt_positions, good.generated)
    );
}

/// A sink whose device fails after `ok` tokens.
struct Failing {
    ok: usize,
}

impl ErrorType for Failing {
    type Error = ErrorKind;
}

impl TokenSink for Failing {
    fn token(&mut self, _: u32, _: &[u8]) -> Result<(), ErrorKind> {
        if self.ok == 0 {
            return Err(ErrorKind::Io);
        }
        self.ok -= 1;
        Ok(())
    }
}

#[test]
fn without_a_frame_a_vlm_answers_text_only_and_sink_errors_stop_it() {
    let bytes = converted(QuantArg::F32, KeepArg::F32);
    let image = Model::parse(bytes.as_slice()).unwrap();
    let question = expected()["question"].as_str().unwrap().to_string();

    // Planned with vision, asked without a frame; and planned text-only.
    let plan = ArenaPlan::new(&image, &options().plan).unwrap();
    let mut arena = vec![0u8; plan.total() + ALIGN];
    let mut s = Session::new(&image, &mut arena, HostClock::new(), options()).unwrap();
    let mut a = VecSink::default();
    let r = ask(&mut s, None, &question, &mut a).unwrap();
    assert_eq!(r.image_tokens, 0);
    assert_eq!(r.prompt_positions, r.prompt_ids);
    assert_eq!(r.timings.encoder_us, 0);
    let err = ask(&mut s, None, &question, &mut Failing { ok: 2 }).unwrap_err();
    assert_eq!(err, Error::Sink(ErrorKind::Io));
    drop(s);

    let text_opts = SessionOptions {
        plan: PlanOptions {
            vision: false,
            ..options().plan
        },
        ..options()
    };
    let text_plan = ArenaPlan::new(&image, &text_opts.plan).unwrap();
    let mut arena = vec![0u8; text_plan.total() + ALIGN];
    let mut s = Session::new(&image, &mut arena, HostClock::new(), text_opts).unwrap();
    let mut b = VecSink::default();
    // A frame given to a session without vision is refused; without it, text-only again.
    assert!(matches!(
        ask(
            &mut s,
            Some(picture().frame()),
            &question,
            &mut VecSink::default()
        ),
        Err(Error::Config { .. })
    ));
    let r = ask(&mut s, None, &question, &mut b).unwrap();
    assert_eq!(r.image_tokens, 0);
    assert_eq!(a.tokens, b.tokens);
    assert!(!a.tokens.is_empty());
    // An explicit picture at the id level is refused instead (the ids may mark it).
    assert!(matches!(
        generate_ids(
            &mut s,
            &[1, 2],
            Some(ImageInput::Pixels(&[0.0; 3])),
            &mut VecSink::default()
        ),
        Err(Error::Config { .. })
    ));
}

#[test]
fn glimpse_plan_emits_the_session_total() {
    let bytes = converted(QuantArg::F32, KeepArg::F32);
    let image = Model::parse(bytes.as_slice()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let glim = tmp.path().join("p.glim");
    std::fs::write(&glim, bytes.as_slice()).unwrap();
    let args = |emit, out: &str| PlanArgs {
        image: glim.clone(),
        image_size: Some(128),
        context: Some(200),
        kv: KvArg::F16,
        chunk: 32,
        max_frame: 640,
        max_prompt: 100,
        sample: false,
        text_only: false,
        stream: false,
        emit,
        output: Some(tmp.path().join(out)),
    };
    let plan = ArenaPlan::new(
        &image,
        &PlanOptions {
            resolution: Some(128),
            max_context: 200,
            chunk: 32,
            max_frame_side: 640,
            max_prompt_bytes: 100,
            ..PlanOptions::default()
        },
    )
    .unwrap();
    assert_eq!(plan.image_tokens, 4);
    let n = plan.total();
    let read = |f: &str| std::fs::read_to_string(tmp.path().join(f)).unwrap();
    glimpse_tools::plan::run(&args(Some(Emit::Rust), "arena.rs")).unwrap();
    assert!(read("arena.rs").contains(&format!("pub const GLIMPSE_ARENA_BYTES: usize = {n};")));
    glimpse_tools::plan::run(&args(Some(Emit::C), "arena.h")).unwrap();
    assert!(read("arena.h").contains(&format!("#define GLIMPSE_ARENA_BYTES {n}\n")));
    glimpse_tools::plan::run(&args(Some(Emit::Ld), "arena.x")).unwrap();
    assert!(read("arena.x").contains(&format!("GLIMPSE_ARENA_BYTES = {n};")));
    glimpse_tools::plan::run(&args(Some(Emit::Json), "plan.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&read("plan.json")).unwrap();
    assert_eq!(v["total_bytes"].as_u64(), Some(n as u64));
    assert_eq!(v["image_tokens"].as_u64(), Some(4));
    let phases = v["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 7);
    let max_extent = phases.iter().map(|p| p["extent"].as_u64().unwrap()).max();
    assert_eq!(max_extent, Some(n as u64));
    glimpse_tools::plan::run(&args(None, "plan.txt")).unwrap();
    let table = read("plan.txt");
    assert!(table.contains("128x128 (4 image tokens)") && table.contains("vision.first"));

    // And a session built from the same options runs in exactly that many bytes.
    let opts = SessionOptions {
        plan: plan.options,
        ..greedy(2)
    };
    let mut g = Guarded::new(n, 0);
    let mut s = Session::new(&image, g.window(), HostClock::new(), opts).unwrap();
    let r = ask(
        &mut s,
        Some(picture().frame()),
        "What is it?",
        &mut VecSink::default(),
    )
    .unwrap();
    assert_eq!((r.image_tokens, r.generated), (4, 2));
    drop(s);
    assert!(g.guards_intact());
}

#[test]
fn a_text_only_image_runs_from_ids_with_the_decoders_own_results() {
    // The Qwen2 decoder fixture: no vision, no tokenizer.
    let dir = glimpse_tests::fixtures_dir().join("decoder");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.glim");
    glimpse_tools::convert::convert(&glimpse_tools::convert::Options::new(
        dir.join("qwen2_tiny"),
        out.clone(),
        QuantArg::F32,
    ))
    .unwrap();
    let bytes = glimpse_tests::AlignedBytes::new(&std::fs::read(&out).unwrap());
    let image = Model::parse(bytes.as_slice()).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap()).unwrap();
    let tokens = ids(&meta["tokens"]);
    let n = tokens.len();

    let opts = SessionOptions {
        plan: PlanOptions {
            max_context: n + 4,
            kv: glimpse_core::decoder::KvFormat::F32,
            chunk: 8,
            ..PlanOptions::default()
        },
        ..greedy(4)
    };
    let plan = ArenaPlan::new(&image, &opts.plan).unwrap();
    assert!(!plan.has_vision());
    let names: Vec<Buf> = plan.buffers().map(|(b, _)| b).collect();
    assert_eq!(
        names,
        vec![Buf::Ids, Buf::KvCache, Buf::DecoderWork],
        "no tokenizer, no vision, greedy"
    );
    let mut g = Guarded::new(plan.total(), 0);
    let mut s = Session::new(&image, g.window(), HostClock::new(), opts).unwrap();
    let vocab = image.config().decoder.as_ref().unwrap().vocab as usize;
    let mut all = vec![0f32; n * vocab];
    let r = s.logits(&tokens, None, LogitsOut::All(&mut all)).unwrap();
    assert_eq!((r.prompt_positions, r.image_tokens), (n, 0));
    // The same decoder, chunk and cache format as `glimpse logits` without a picture:
    // identical arithmetic.
    let want = glimpse_tools::logits::compute(&image, &tokens, false, 8).unwrap();
    assert_eq!(all, want);
    // Greedy continuation: each token is the argmax of the previous step's logits.
    let mut sink = VecSink::default();
    let r = generate_ids(&mut s, &tokens, None, &mut sink).unwrap();
    assert_eq!(r.generated, 4);
    let first = glimpse_core::sampler::argmax(&want[(n - 1) * vocab..]).unwrap();
    assert_eq!(sink.tokens[0], first);
    assert!(sink.text.is_empty(), "no tokenizer: ids only");
    // Asking in words needs a tokenizer.
    assert!(matches!(
        ask(&mut s, None, "hi", &mut VecSink::default()),
        Err(Error::Tokenizer(_))
    ));
    drop(s);
    assert!(g.guards_intact());
}

#[test]
fn glimpse_run_takes_a_picture_and_refuses_what_it_cannot_do() {
    let bytes = converted(QuantArg::F32, KeepArg::F32);
    let tmp = tempfile::tempdir().unwrap();
    let glim = tmp.path().join("p.glim");
    std::fs::write(&glim, bytes.as_slice()).unwrap();
    let args = |picture: bool, raw: bool| glimpse_tools::RunArgs {
        image: glim.clone(),
        prompt: Some("What is it?".into()),
        tokens: None,
        system: None,
        max_tokens: 3,
        temp: 0.0,
        top_k: 0,
        top_p: 1.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
        raw,
        json: true,
        activations: Default::default(),
        pipeline: glimpse_tools::run::PipelineArgs {
            picture: picture.then(|| fixture_dir().join("image.png")),
            shape: glimpse_tools::run::ShapeArgs {
                image_size: None,
                context: Some(128),
                kv: KvArg::F16,
            },
            threads: glimpse_tools::run::ThreadsArg { threads: Some(2) },
        },
    };
    glimpse_tools::run::run(&args(true, false)).unwrap();
    glimpse_tools::run::run(&args(false, false)).unwrap();
    let err = glimpse_tools::run::run(&args(true, true)).unwrap_err();
    assert!(err.to_string().contains("--raw"), "{err:#}");
}
