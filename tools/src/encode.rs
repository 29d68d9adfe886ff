//! `glimpse encode`: runs the FastViTHD encoder (and optionally the projector) of a
//! weights image on one picture or one preprocessed pixel array and writes the features
//! as a `.npy` file (`tokens x channels`, f32, tokens row-major over the output grid).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail, ensure};
use glimpse_core::Model;
use glimpse_core::arena::Arena;
use glimpse_core::preprocess;
use glimpse_core::projector::Projector;
use glimpse_core::vision::VisionEncoder;
use glimpse_host::MappedImage;

use crate::{EncodeArgs, EncodeStage, npy};

/// Decode a PNG/JPEG into planar `3 x R x R` f32 in [0, 1] the way FastVLM's reference
/// does (spec section 6.1), through the core's preprocessing: converted to RGB, padded to
/// a black square (centred, as `expand2square`), resized with PIL's bicubic when it is not
/// `R x R` already (bit-exact with Pillow), then divided by 255.
pub fn load_picture(path: &Path, resolution: u32) -> Result<Vec<f32>> {
    let pic = crate::run::load_picture(path)?;
    ensure!(
        pic.width > 0 && pic.height > 0,
        "{}: empty picture",
        path.display()
    );
    let r = resolution as usize;
    let mut out = vec![0f32; 3 * r * r];
    let mut scratch = vec![0u8; preprocess::scratch_bytes(pic.width, pic.height, r)];
    let side = pic.width.max(pic.height);
    preprocess::preprocess(&pic.frame(), r, side, &mut out, &mut scratch)
        .with_context(|| format!("preprocessing {}", path.display()))?;
    Ok(out)
}

/// Pixels from a float32 `.npy` array of shape `in_channels x R x R`, and `R`.
pub fn load_pixels(path: &Path, in_channels: usize) -> Result<(Vec<f32>, u32)> {
    let (shape, px) = npy::read_f32(path)?;
    let ok = shape.len() == 3 && shape[0] == in_channels && shape[1] == shape[2] && shape[1] > 0;
    ensure!(
        ok,
        "{}: shape {shape:?}, expected [{in_channels}, R, R] (channels first, square)",
        path.display()
    );
    let r = u32::try_from(shape[1]).context("resolution too large")?;
    Ok((px, r))
}

/// What [`encode`] measured.
#[derive(Clone, Copy, Debug)]
pub struct EncodeStats {
    /// Seconds spent in the encoder (and projector).
    pub seconds: f64,
    /// Arena bytes the run was given (what the plan asked for).
    pub arena_bytes: usize,
    /// Arena bytes in use at the peak.
    pub arena_peak: usize,
}

/// Run the encoder (and the projector for [`EncodeStage::Projector`]) on planar pixels at
/// `resolution`. Returns `[tokens, channels]` and the values.
pub fn encode(
    image: &Model<'_>,
    pixels: &[f32],
    resolution: u32,
    stage: EncodeStage,
) -> Result<([usize; 2], Vec<f32>, EncodeStats)> {
    let enc = VisionEncoder::new(image)?;
    let res = resolution as usize;
    let plan = enc.plan(res)?;
    let projector = match stage {
        EncodeStage::Encoder => None,
        EncodeStage::Projector => Some(Projector::new(image)?),
    };
    let mut need = plan.arena_bytes();
    if let Some(p) = &projector {
        ensure!(
            p.in_dim() == plan.out_dim,
            "projector takes {} channels, the encoder makes {}",
            p.in_dim(),
            plan.out_dim
        );
        need = need.max(p.arena_bytes(plan.tokens));
    }
    let mut buf = vec![0u8; need];
    let mut arena = Arena::new(&mut buf);
    let mut features = vec![0f32; plan.tokens * plan.out_dim];
    let start = Instant::now();
    enc.encode(pixels, res, &mut arena, &mut features)?;
    let (shape, out) = match &projector {
        None => ([plan.tokens, plan.out_dim], features),
        Some(p) => {
            let mut out = vec![0f32; plan.tokens * p.out_dim()];
            p.forward(&features, plan.tokens, &mut arena, &mut out)?;
            ([plan.tokens, p.out_dim()], out)
        }
    };
    let stats = EncodeStats {
        seconds: start.elapsed().as_secs_f64(),
        arena_bytes: need,
        arena_peak: arena.peak(),
    };
    Ok((shape, out, stats))
}

/// `glimpse encode`.
pub fn run(args: &EncodeArgs) -> Result<ExitCode> {
    let mapped = MappedImage::open(&args.image)?;
    let image = mapped.parsed()?;
    let vcfg = image
        .config()
        .vision
        .as_ref()
        .ok_or_else(|| anyhow!("{} has no vision encoder", args.image.display()))?;
    let (pixels, res) = match (&args.pixels, &args.picture) {
        (Some(p), None) => {
            let (px, r) = load_pixels(p, vcfg.in_channels as usize)?;
            if let Some(want) = args.resolution {
                ensure!(
                    want == r,
                    "--resolution {want} but {} is {r} x {r}",
                    p.display()
                );
            }
            (px, r)
        }
        (None, Some(p)) => {
            let r = args.resolution.unwrap_or(vcfg.image_size);
            (load_picture(p, r)?, r)
        }
        _ => bail!("give exactly one of --image and --pixels"),
    };
    let stride = vcfg.stride();
    ensure!(
        res > 0 && res % stride == 0,
        "resolution {res} is not a positive multiple of the encoder stride {stride}"
    );
    let (shape, out, stats) = encode(&image, &pixels, res, args.stage)?;
    npy::write_f32(&args.output, &shape, &out)?;
    println!(
        "{}: {} tokens x {} channels at {res}x{res} in {:.3} s; arena {} bytes ({:.1} MiB), peak {} bytes",
        args.output.display(),
        shape[0],
        shape[1],
        stats.seconds,
        stats.arena_bytes,
        stats.arena_bytes as f64 / (1024.0 * 1024.0),
        stats.arena_peak
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_must_be_channels_first_and_square() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        npy::write_f32(&p, &[3, 4, 4], &[0.5; 48]).unwrap();
        let (px, r) = load_pixels(&p, 3).unwrap();
        assert_eq!((px.len(), r), (48, 4));
        npy::write_f32(&p, &[4, 4, 3], &[0.5; 48]).unwrap();
        let e = load_pixels(&p, 3).unwrap_err().to_string();
        assert!(e.contains("expected [3, R, R]"), "{e}");
        npy::write_f32(&p, &[3, 4, 5], &[0.5; 60]).unwrap();
        assert!(load_pixels(&p, 3).is_err());
        npy::write_f32(&p, &[3, 16], &[0.5; 48]).unwrap();
        assert!(load_pixels(&p, 3).is_err());
    }

    #[test]
    fn pictures_are_squared_resized_and_scaled() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.png");
        // 4 wide, 2 high, all white: padding adds a black row above and below.
        image::RgbImage::from_pixel(4, 2, image::Rgb([255, 255, 255]))
            .save(&p)
            .unwrap();
        let px = load_picture(&p, 4).unwrap();
        assert_eq!(px.len(), 3 * 16);
        for c in 0..3 {
            let plane = &px[c * 16..(c + 1) * 16];
            assert!(plane[..4].iter().all(|&v| v == 0.0), "{plane:?}");
            assert!(plane[4..12].iter().all(|&v| v == 1.0), "{plane:?}");
            assert!(plane[12..].iter().all(|&v| v == 0.0), "{plane:?}");
        }
        let resized = load_picture(&p, 8).unwrap();
        assert_eq!(resized.len(), 3 * 64);
        assert!(resized.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
