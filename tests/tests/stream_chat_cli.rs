//! `glimpse stream` and `glimpse chat` as a user runs them, on the bundled tiny FastVLM
//! and the bundled clip (models/tiny-fastvlm/clip, made by
//! tests/scripts/tiny_fastvlm/make_clip.py): one JSON line per frame with the clip's
//! ground-truth captions, held frames skipped, the prefix reused, the same captions from
//! a directory of frames and from raw RGB24 on stdin, bad frames named; a scripted chat
//! whose answers match single-shot runs and which survives bad input.

mod decoder_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use glimpse_tests::{glimpse_bin, workspace_root};
use glimpse_tools::QuantArg;
use serde_json::Value;

fn model_dir() -> PathBuf {
    workspace_root().join("models").join("tiny-fastvlm")
}

fn clip() -> PathBuf {
    model_dir().join("clip").join("clip.png")
}

/// The clip's ground truth: each frame's caption and whether it repeats the frame
/// before it exactly (same scene, same offset).
fn truth() -> Vec<(String, bool)> {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir().join("clip").join("clip.json")).unwrap(),
    )
    .unwrap();
    let frames = v["frames"].as_array().unwrap();
    let key = |f: &Value| (f["scene"].clone(), f["dx"].clone(), f["dy"].clone());
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let held = i > 0 && key(&frames[i - 1]) == key(f);
            (f["caption"].as_str().unwrap().to_string(), held)
        })
        .collect()
}

/// The tiny model converted to Q8_0 in `dir`.
fn model(dir: &Path) -> PathBuf {
    let bytes = decoder_common::convert_to_bytes(&model_dir(), QuantArg::Q8_0);
    let path = dir.join("tiny.glim");
    std::fs::write(&path, bytes.as_slice()).unwrap();
    path
}

fn glimpse(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(glimpse_bin())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running glimpse");
    // Fed from a thread, so a child that writes while it reads cannot deadlock; one that
    // exits early (a refused argument) just closes the pipe.
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    out
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "glimpse failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Per-frame objects and the summary of a `--json` stream.
fn frames_and_summary(stdout: &str) -> (Vec<Value>, Value) {
    let mut lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = lines.pop().unwrap();
    assert!(summary["summary"].is_object(), "{summary}");
    (lines, summary["summary"].clone())
}

fn texts(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn stream_captions_the_clip_skips_held_frames_and_reads_every_input() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let m = m.to_str().unwrap();
    let clip = clip();
    let truth = truth();

    // Below the smallest slide the clip has (0.11%): only exact repeats are skipped.
    let out = glimpse(
        &[
            "stream",
            m,
            "--video",
            clip.to_str().unwrap(),
            "--min-change",
            "0.0005",
            "--json",
        ],
        None,
    );
    let (frames, summary) = frames_and_summary(&ok(&out));
    assert_eq!(frames.len(), truth.len());
    for (i, (f, (caption, held))) in frames.iter().zip(&truth).enumerate() {
        assert_eq!(f["frame"], i);
        assert_eq!(f["text"].as_str().unwrap(), caption, "frame {i}");
        assert_eq!(f["skipped"].as_bool().unwrap(), *held, "frame {i}");
        if *held {
            assert!(f["ttft_ms"].is_null(), "frame {i}");
        } else {
            assert!(f["ttft_ms"].as_f64().unwrap() > 0.0, "frame {i}");
            // The first frame prefills the prefix; every later one keeps it.
            let reused = f["reused_positions"].as_u64().unwrap();
            assert_eq!(reused == 0, i == 0, "frame {i}: reused {reused}");
        }
    }
    let held = truth.iter().filter(|t| t.1).count();
    assert_eq!(summary["frames"], truth.len());
    assert_eq!(summary["skipped"], held);
    assert_eq!(summary["captions"], truth.len() - held);
    assert!(summary["captions_per_s"].as_f64().unwrap() > 0.0);

    // The same frames from a directory and from raw RGB24 on stdin.
    let pictures = glimpse_host::video::animation_frames(&clip).unwrap();
    assert_eq!(pictures.len(), truth.len());
    let dir = tmp.path().join("frames");
    std::fs::create_dir(&dir).unwrap();
    let mut raw = Vec::new();
    for (i, p) in pictures.iter().enumerate() {
        image::RgbImage::from_raw(p.width as u32, p.height as u32, p.rgb.clone())
            .unwrap()
            .save(dir.join(format!("{i:04}.png")))
            .unwrap();
        raw.extend_from_slice(&p.rgb);
    }
    let by_dir = glimpse(
        &[
            "stream",
            m,
            "--frames",
            dir.to_str().unwrap(),
            "--min-change",
            "0.0005",
            "--json",
        ],
        None,
    );
    let by_raw = glimpse(
        &[
            "stream",
            m,
            "--raw",
            "128x128",
            "--min-change",
            "0.0005",
            "--json",
        ],
        Some(&raw),
    );
    assert_eq!(texts(&frames_and_summary(&ok(&by_dir)).0), texts(&frames));
    assert_eq!(texts(&frames_and_summary(&ok(&by_raw)).0), texts(&frames));

    // Gating off: every frame captioned, and captioned the same; --every 4 keeps the
    // frame indices of the input.
    let all = glimpse(
        &[
            "stream",
            m,
            "--video",
            clip.to_str().unwrap(),
            "--min-change",
            "0",
            "--json",
        ],
        None,
    );
    let (all, _) = frames_and_summary(&ok(&all));
    assert!(all.iter().all(|f| !f["skipped"].as_bool().unwrap()));
    assert_eq!(texts(&all), texts(&frames));
    let every = glimpse(
        &[
            "stream",
            m,
            "--video",
            clip.to_str().unwrap(),
            "--every",
            "4",
            "--json",
        ],
        None,
    );
    let (every, _) = frames_and_summary(&ok(&every));
    let idx: Vec<u64> = every.iter().map(|f| f["frame"].as_u64().unwrap()).collect();
    assert_eq!(idx, (0..truth.len() as u64).step_by(4).collect::<Vec<_>>());

    // The human-readable form: one line per frame and a summary.
    let text = ok(&glimpse(
        &["stream", m, "--video", clip.to_str().unwrap()],
        None,
    ));
    assert_eq!(text.lines().count(), truth.len() + 1);
    assert!(
        text.lines().last().unwrap().contains("captions/s"),
        "{text}"
    );

    // Bad frames are errors that name the frame.
    let mut short = raw[..128 * 128 * 3 * 2].to_vec();
    short.extend_from_slice(&[7; 100]);
    let out = glimpse(&["stream", m, "--raw", "128x128", "--json"], Some(&short));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("frame 2: raw input ended after 100 of 49152 bytes"),
        "{err}"
    );
    std::fs::write(dir.join("0005.png"), b"not a png").unwrap();
    let out = glimpse(&["stream", m, "--frames", dir.to_str().unwrap()], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("frame 5 (") && err.contains("0005.png"),
        "{err}"
    );
    let out = glimpse(&["stream", m, "--raw", "128"], Some(&raw));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("WIDTHxHEIGHT"));
}

/// The caption `glimpse run` gives `picture` in a fresh process.
fn single_shot(m: &str, picture: &Path) -> String {
    let out = ok(&glimpse(
        &[
            "run",
            m,
            "--image",
            picture.to_str().unwrap(),
            "--prompt",
            "Describe the image.",
            "--json",
        ],
        None,
    ));
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    v["text"].as_str().unwrap().trim().to_string()
}

#[test]
fn a_scripted_chat_keeps_the_conversation_and_survives_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let m = m.to_str().unwrap();
    let pair = model_dir().join("samples").join("relation_pair.png");
    let group = model_dir().join("samples").join("group.png");
    let script = format!(
        "Describe the image.\n/stats\nWhat else?\n/stats\n{}\n/image {}\nDescribe the image.\n/image missing.png\n/nonsense\n/reset\n/stats\n",
        "tell me everything about it ".repeat(12),
        group.display()
    );
    let out = glimpse(
        &[
            "chat",
            m,
            "--image",
            pair.to_str().unwrap(),
            "--context",
            "80",
            "--max-tokens",
            "12",
        ],
        Some(script.as_bytes()),
    );
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let answers: Vec<&str> = stdout.lines().collect();
    // Three answers: the first picture, the follow-up, the second picture (the long
    // line was refused).
    assert_eq!(answers.len(), 3, "{stdout}\n{stderr}");
    assert_eq!(answers[0].trim(), single_shot(m, &pair));
    assert_eq!(answers[2].trim(), single_shot(m, &group));
    let stats: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("context:"))
        .collect();
    assert_eq!(stats.len(), 3, "{stderr}");
    // After the first turn: 40 prompt positions and the answer; after the follow-up, more
    // of the context used, with the first turn's positions reused.
    let used = |l: &str| -> usize {
        l["context: ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(used(stats[0]) >= 40, "{}", stats[0]);
    assert!(used(stats[1]) > used(stats[0]), "{stats:?}");
    assert!(
        stats[1].contains(&format!("reused {}", used(stats[0]))),
        "{stats:?}"
    );
    assert!(stats[2].starts_with("context: 0 of 80"), "{stats:?}");
    assert!(stderr.contains("error: the turn needs"), "{stderr}");
    assert!(stderr.contains("missing.png"), "{stderr}");
    assert!(stderr.contains("unknown command /nonsense"), "{stderr}");
}
