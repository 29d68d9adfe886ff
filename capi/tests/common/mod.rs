//! Helpers the C-program tests share: where cargo puts artifacts, running a command and
//! showing its output when it fails, the tiny model converted to a file.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use glimpse_tests::workspace_root;
use glimpse_tools::QuantArg;
use glimpse_tools::convert::Options;

/// The target directory of this checkout.
pub fn target_root() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Run `cmd`, returning its stdout; a failure shows both outputs.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The bundled tiny FastVLM converted to Q8_0 at `dir/tiny.glim`.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let out = dir.join("tiny.glim");
    let src = workspace_root().join("models").join("tiny-fastvlm");
    glimpse_tests::convert_file(&Options::new(src, out, QuantArg::Q8_0))
}
