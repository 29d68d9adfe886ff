//! Kept state in a Session, on the bundled tiny trained FastVLM (Q8_0, what users run):
//! follow-up turns prefill only their new ids and give, to the bit, the logits of a fresh
//! session fed the whole transcript; a turn that would overflow the context is refused
//! and leaves the conversation as it was; a frame stream prefills its prompt prefix once
//! and captions every frame exactly as a fresh single-frame run does, skipping frames
//! that did not change.
//!
//! Exactness holds because prefill in chunks and single-token decode do the same
//! arithmetic per position (core/src/decoder/tests.rs checks that on the decoder alone),
//! so no tolerance is needed: every comparison here is `==` on f32 bits or ids.

mod decoder_common;

use glimpse_core::Error;
use glimpse_core::Model;
use glimpse_core::chat::{Turn, render, render_follow_up};
use glimpse_core::planner::{ArenaPlan, Buf};
use glimpse_core::preprocess::Frame;
use glimpse_core::session::{
    IMAGE_SENTINEL, ImageInput, LogitsOut, Prompt, Report, Session, SessionOptions,
};
use glimpse_core::stream::FrameStream;
use glimpse_core::tokenizer::{Specials, Tokenizer};
use glimpse_tests::{AlignedBytes, workspace_root};
use glimpse_tools::QuantArg;
use glimpse_tools::run::{CollectSink, HostClock, Picture, arena_for, load_picture};
use glimpse_tools::tokenize::encode;

const QUESTION: &str = "Describe the image.";

fn model() -> AlignedBytes {
    let dir = workspace_root().join("models").join("tiny-fastvlm");
    decoder_common::convert_to_bytes(&dir, QuantArg::Q8_0)
}

fn sample(name: &str) -> Picture {
    let path = workspace_root()
        .join("models")
        .join("tiny-fastvlm")
        .join("samples")
        .join(name);
    load_picture(&path).expect("sample picture")
}

fn options(image: &Model<'_>, max_new: usize) -> SessionOptions {
    SessionOptions {
        max_new_tokens: max_new,
        ..SessionOptions::for_model(image, Some(128), 64)
    }
}

/// The ids a fresh tokenizer gives for `text` (control tokens parsed).
fn ids_of(tok: &Tokenizer<'_>, text: &str) -> Vec<u32> {
    encode(tok, text, Specials::Parse).expect("tokenizing")
}

fn run(
    s: &mut Session<'_, '_, HostClock>,
    prompt: Prompt<'_>,
    frame: Option<Frame<'_>>,
) -> (Report, Vec<u32>) {
    let mut sink = CollectSink::default();
    let r = s
        .run(prompt, frame.map(ImageInput::Frame), &mut sink)
        .expect("run");
    assert_eq!(s.generated(), &sink.tokens[..]);
    (r, sink.tokens)
}

#[test]
fn a_three_turn_conversation_equals_a_fresh_session_fed_the_transcript() {
    let bytes = model();
    let image = Model::parse(bytes.as_slice()).unwrap();
    let tok = Tokenizer::from_image(&image).unwrap();
    let template = image.config().tokenizer.as_ref().unwrap().chat.clone();
    let vocab = image.config().decoder.as_ref().unwrap().vocab as usize;
    let image_token = image
        .config()
        .decoder
        .as_ref()
        .unwrap()
        .image_token_id
        .unwrap();
    let pic = sample("group.png");
    let opts = options(&image, 8);
    let plan = ArenaPlan::new(&image, &opts.plan).unwrap();
    let tokens = plan.image_tokens;
    let mut arena = arena_for(&plan);
    let mut s = Session::new(&image, &mut arena, HostClock::new(), opts.clone()).unwrap();

    // Turn 1: the picture and the trained question.
    let (r1, a1) = run(&mut s, Prompt::chat(QUESTION), Some(pic.frame()));
    assert_eq!(r1.reused_positions, 0);
    assert_eq!(r1.image_tokens, tokens);
    let mut buf = vec![0u8; 1024];
    let first = render(
        &template,
        &Turn {
            system: None,
            user: QUESTION,
            image: true,
        },
        &mut buf,
    )
    .unwrap()
    .to_string();
    let (before, after) = first.split_once("<image>").unwrap();
    let mut transcript = ids_of(&tok, before);
    transcript.push(IMAGE_SENTINEL);
    transcript.extend(ids_of(&tok, after));
    assert_eq!(s.prompt_ids(), &transcript[..]);
    assert_eq!(r1.prompt_positions, transcript.len() - 1 + tokens);
    transcript.extend(&a1);
    let after_turn1 = r1.prompt_positions + r1.decode_steps;
    assert_eq!(s.cached_positions(), after_turn1);

    // Turn 2 about the same picture: nothing re-encoded, only the new ids (and the
    // answer's final token, sampled but not fed) prefilled.
    let q2 = "What colour are they?";
    let close = a1.last() != tok.find_token(b"<|im_end|>").as_ref();
    let follow = render_follow_up(&template, q2, close, &mut buf)
        .unwrap()
        .to_string();
    let want2 = ids_of(&tok, &follow);
    let (r2, a2) = run(&mut s, Prompt::chat(q2), None);
    assert_eq!(s.prompt_ids(), &want2[..]);
    assert_eq!(r2.reused_positions, after_turn1);
    assert_eq!(r2.prompt_positions, 1 + want2.len());
    assert_eq!((r2.image_tokens, r2.timings.encoder_us), (0, 0));
    transcript.extend(&want2);
    transcript.extend(&a2);

    // Turn 3, teacher-forced: the logits of every position it prefills.
    let q3 = "How many?";
    let close = a2.last() != tok.find_token(b"<|im_end|>").as_ref();
    let follow = render_follow_up(&template, q3, close, &mut buf)
        .unwrap()
        .to_string();
    let want3 = ids_of(&tok, &follow);
    let mut kept = vec![0f32; (1 + want3.len()) * vocab];
    let r3 = s
        .score(Prompt::chat(q3), None, LogitsOut::All(&mut kept))
        .unwrap();
    assert_eq!(r3.prompt_positions, 1 + want3.len());
    assert_eq!(
        r3.reused_positions,
        r2.reused_positions + r2.prompt_positions + r2.decode_steps
    );
    transcript.extend(&want3);
    assert_eq!(s.history(), &transcript[..], "the conversation's ids");
    drop(s);

    // One fresh session, the whole transcript at once (the image as the config's
    // image-token id, expanded the same way).
    let ids: Vec<u32> = transcript
        .iter()
        .map(|&id| {
            if id == IMAGE_SENTINEL {
                image_token
            } else {
                id
            }
        })
        .collect();
    let positions = ids.len() - 1 + tokens;
    let mut fresh_arena = arena_for(&plan);
    let mut fresh = Session::new(&image, &mut fresh_arena, HostClock::new(), opts).unwrap();
    let mut all = vec![0f32; positions * vocab];
    fresh
        .logits(
            &ids,
            Some(ImageInput::Frame(pic.frame())),
            LogitsOut::All(&mut all),
        )
        .unwrap();
    // The kept answers are the fresh session's greedy choices at their positions.
    let argmax = |row: &[f32]| glimpse_core::sampler::argmax(row).unwrap();
    let a1_at = transcript.len() - want3.len() - a2.len() - want2.len() - a1.len();
    for (k, &id) in a1.iter().enumerate() {
        let p = a1_at - 1 + tokens - 1 + k; // position before the token
        assert_eq!(
            argmax(&all[p * vocab..(p + 1) * vocab]),
            id,
            "turn 1 token {k}"
        );
    }
    let a2_at = transcript.len() - want3.len() - a2.len();
    for (k, &id) in a2.iter().enumerate() {
        let p = a2_at - 1 + tokens - 1 + k;
        assert_eq!(
            argmax(&all[p * vocab..(p + 1) * vocab]),
            id,
            "turn 2 token {k}"
        );
    }
    let tail = &all[(positions - 1 - want3.len()) * vocab..];
    assert!(
        tail.iter()
            .zip(&kept)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "turn 3's logits differ from the fresh session's"
    );
}

#[test]
fn a_turn_past_the_context_is_refused_and_the_conversation_goes_on_unchanged() {
    let bytes = model();
    let image = Model::parse(bytes.as_slice()).unwrap();
    let mut opts = options(&image, 6);
    opts.plan.max_context = 72;
    opts.plan.max_prompt_bytes = 256;
    let plan = ArenaPlan::new(&image, &opts.plan).unwrap();
    let pic = sample("relation_pair.png");

    let mut arena = arena_for(&plan);
    let mut s = Session::new(&image, &mut arena, HostClock::new(), opts.clone()).unwrap();
    run(&mut s, Prompt::chat(QUESTION), Some(pic.frame()));
    let history = s.history().to_vec();
    let cached = s.cached_positions();
    let long = "and what else is there in the picture? ".repeat(2);
    let mut sink = CollectSink::default();
    let err = s.run(Prompt::chat(&long), None, &mut sink).unwrap_err();
    assert!(
        matches!(err, Error::ContextOverflow { max: 72, .. }),
        "{err:?}"
    );
    assert!(sink.tokens.is_empty());
    assert_eq!(s.history(), &history[..]);
    assert_eq!(s.cached_positions(), cached);
    let (_, after_refusal) = run(&mut s, Prompt::chat("Colour?"), None);
    drop(s);

    // The same two turns without the refused one in between.
    let mut arena2 = arena_for(&plan);
    let mut t = Session::new(&image, &mut arena2, HostClock::new(), opts).unwrap();
    run(&mut t, Prompt::chat(QUESTION), Some(pic.frame()));
    let (_, direct) = run(&mut t, Prompt::chat("Colour?"), None);
    assert_eq!(after_refusal, direct);

    // reset() starts over: the first turn again gives the first answer again.
    t.reset();
    assert_eq!((t.history().len(), t.cached_positions()), (0, 0));
    let (r, _) = run(&mut t, Prompt::chat(QUESTION), Some(pic.frame()));
    assert_eq!(r.reused_positions, 0);
}

/// Tokens of a fresh single-frame run on `frame` (default plan: nothing kept).
fn fresh_caption(image: &Model<'_>, frame: Frame<'_>) -> Vec<u32> {
    let opts = options(image, 16);
    let plan = ArenaPlan::new(image, &opts.plan).unwrap();
    let mut arena = arena_for(&plan);
    let mut s = Session::new(image, &mut arena, HostClock::new(), opts).unwrap();
    run(&mut s, Prompt::chat(QUESTION), Some(frame)).1
}

#[test]
fn a_frame_stream_prefills_its_prefix_once_and_captions_like_fresh_runs() {
    let bytes = model();
    let image = Model::parse(bytes.as_slice()).unwrap();
    let pics = [
        sample("group.png"),
        sample("relation_pair.png"),
        sample("relation_singles.png"),
    ];
    let want: Vec<Vec<u32>> = pics
        .iter()
        .map(|p| fresh_caption(&image, p.frame()))
        .collect();
    // A, A, B, B, C, A: repeats are skipped, changes are captioned.
    let order = [0usize, 0, 1, 1, 2, 0];

    for (keep, min_change) in [(true, 0.01f32), (true, 0.0), (false, 0.01)] {
        let mut opts = options(&image, 16);
        opts.plan.kv_across_pictures = keep;
        let plan = ArenaPlan::new(&image, &opts.plan).unwrap();
        if keep {
            // Kept through the vision phases: the cache shares no byte with them.
            let kv = plan.placement(Buf::KvCache).unwrap();
            for (b, p) in plan.buffers() {
                if b != Buf::KvCache {
                    assert!(!kv.overlaps(p), "{b:?} overlaps the kept KV cache");
                }
            }
        }
        let mut arena = arena_for(&plan);
        let mut s = Session::new(&image, &mut arena, HostClock::new(), opts).unwrap();
        let mut stream = FrameStream::new(min_change);
        let mut prefix = None;
        for (i, &k) in order.iter().enumerate() {
            let mut sink = CollectSink::default();
            let fr = stream
                .caption(&mut s, Prompt::chat(QUESTION), pics[k].frame(), &mut sink)
                .unwrap();
            assert_eq!(fr.frame, i);
            let repeat = i > 0 && order[i - 1] == k;
            if repeat && min_change > 0.0 {
                assert!(fr.skipped, "frame {i} did not change and was not skipped");
                assert!(sink.tokens.is_empty());
                assert_eq!(fr.change, 0.0);
                continue;
            }
            assert!(!fr.skipped, "frame {i} ({keep}, {min_change})");
            assert_eq!(
                sink.tokens, want[k],
                "frame {i}: caption differs from a fresh run"
            );
            let r = fr.run.unwrap();
            let image_at = s
                .prompt_ids()
                .iter()
                .position(|&id| id == IMAGE_SENTINEL)
                .unwrap();
            if i == 0 || !keep {
                assert_eq!(r.reused_positions, 0, "frame {i}");
            } else {
                // Everything before the picture was kept; the frame's positions onward
                // were prefilled.
                assert_eq!(r.reused_positions, image_at, "frame {i}");
                assert_eq!(
                    r.prompt_positions + r.reused_positions,
                    s.prompt_ids().len() - 1 + r.image_tokens
                );
            }
            prefix.get_or_insert(image_at);
        }
        let c = stream.counts();
        assert_eq!(c.frames, order.len());
        let skipped = if min_change > 0.0 { 2 } else { 0 };
        assert_eq!((c.captioned, c.skipped), (order.len() - skipped, skipped));
        assert!(prefix.unwrap() > 10, "the prefix holds the system prompt");
    }
}

/// An executor that runs every task in order on the calling thread but claims three
/// threads, so kernels split their work, and counts the dispatches it is handed.
struct Counting {
    dispatches: usize,
}

impl glimpse_hal::Executor for Counting {
    fn run(&mut self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.dispatches += 1;
        for t in 0..tasks {
            f(t);
        }
    }

    fn parallelism(&self) -> usize {
        3
    }
}

#[test]
fn a_session_runs_on_the_executor_it_is_handed() {
    let bytes = model();
    let image = Model::parse(bytes.as_slice()).unwrap();
    let pic = sample("group.png");
    let opts = options(&image, 16);
    let want = fresh_caption(&image, pic.frame());
    let plan = ArenaPlan::new(&image, &opts.plan).unwrap();
    let mut arena = arena_for(&plan);
    let mut exec = Counting { dispatches: 0 };
    let mut s = Session::new(&image, &mut arena, HostClock::new(), opts)
        .unwrap()
        .with_executor(&mut exec);
    let mut sink = CollectSink::default();
    s.run(
        Prompt::chat(QUESTION),
        Some(ImageInput::Frame(pic.frame())),
        &mut sink,
    )
    .unwrap();
    drop(s);
    // Work split three ways gives the same bits as the default (sequential) executor.
    assert_eq!(sink.tokens, want);
    assert!(exec.dispatches > 10, "{} dispatches", exec.dispatches);
}
