//! config.json reading: typed field access with errors that name the field, and the
//! FastViTHD structure (timm `fastvit_mci3` arguments) a config implies.

use anyhow::{Result, anyhow, bail};
use glimpse_quant::schema::{MAX_STAGES, TokenMixer};
use serde_json::Value;

/// A JSON object with a path for error messages (`config.json:text_config`).
#[derive(Clone, Copy, Debug)]
pub struct Obj<'a> {
    /// The object, or `None` when the config has no such section.
    pub v: Option<&'a serde_json::Map<String, Value>>,
    /// Where it is, for messages.
    pub path: &'a str,
}

impl<'a> Obj<'a> {
    /// Wrap a value that must be an object (or absent).
    pub fn new(v: Option<&'a Value>, path: &'a str) -> Result<Obj<'a>> {
        match v {
            None | Some(Value::Null) => Ok(Obj { v: None, path }),
            Some(Value::Object(m)) => Ok(Obj { v: Some(m), path }),
            Some(other) => bail!("{path}: expected an object, found {other}"),
        }
    }

    /// An empty object.
    #[cfg(test)]
    pub fn empty(path: &'a str) -> Obj<'a> {
        Obj { v: None, path }
    }

    /// Raw value of a key, treating JSON null as absent.
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.v.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => bail!("{}.{key}: expected a string, found {other}", self.path),
        }
    }

    /// A non-negative integer that fits u32.
    pub fn u32(&self, key: &str) -> Result<Option<u32>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => Ok(Some(as_u32(v).ok_or_else(|| {
                anyhow!(
                    "{}.{key}: expected a non-negative integer, found {v}",
                    self.path
                )
            })?)),
        }
    }

    /// A number.
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => Ok(Some(v.as_f64().ok_or_else(|| {
                anyhow!("{}.{key}: expected a number, found {v}", self.path)
            })?)),
        }
    }

    /// A boolean.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => bail!("{}.{key}: expected true or false, found {other}", self.path),
        }
    }

    /// A token id or list of them (`eos_token_id` is either).
    pub fn ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.raw(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| as_u32(v).ok_or_else(|| anyhow!("{}.{key}: bad token id {v}", self.path)))
                .collect(),
            Some(v) => Ok(vec![as_u32(v).ok_or_else(|| {
                anyhow!(
                    "{}.{key}: expected a token id or a list of them, found {v}",
                    self.path
                )
            })?]),
        }
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

/// FastViTHD structure, everything the converter needs to name and shape-check tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionSpec {
    /// Input resolution.
    pub image_size: u32,
    /// Input channels.
    pub in_chans: u32,
    /// Blocks per stage.
    pub layers: Vec<u32>,
    /// Channels per stage.
    pub dims: Vec<u32>,
    /// ConvFFN hidden channels per stage.
    pub ffn_dims: Vec<u32>,
    /// Token mixer per stage.
    pub mixers: Vec<TokenMixer>,
    /// RepCPE before a stage's blocks.
    pub pos_embs: Vec<bool>,
    /// RepMixer kernel.
    pub mixer_kernel: u32,
    /// PatchEmbed large kernel.
    pub down_kernel: u32,
    /// RepCPE kernel.
    pub pos_kernel: u32,
    /// ConvFFN depthwise kernel (fixed at 7 in timm's ConvMlp).
    pub ffn_kernel: u32,
    /// `conv_exp` output channels.
    pub out_dim: u32,
    /// Squeeze-excite hidden channels of `conv_exp`.
    pub se_dim: u32,
    /// Attention head width (fixed at 32 in timm's Attention).
    pub head_dim: u32,
    /// Whether blocks carry layer scales (`layer_scale_init_value` not null).
    pub layer_scale: bool,
    /// BatchNorm / LayerNorm epsilon.
    pub norm_eps: f64,
}

/// Default arguments of a timm FastViT MCi variant that FastViTHD's graph covers.
fn variant_defaults(arch: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    // The pretrained tag (`fastvit_mci3.apple_mclip2_dfndr2b`) does not change the graph.
    let base = arch.split('.').next().unwrap_or(arch);
    match base {
        "fastvit_mci3" => Ok((vec![2, 12, 24, 4, 2], vec![96, 192, 384, 768, 1536])),
        "fastvit_mci4" => Ok((vec![2, 12, 24, 4, 4], vec![128, 256, 512, 1024, 2048])),
        other => bail!(
            "vision architecture `{other}` is not supported (FastViTHD is timm `fastvit_mci3`; \
             mci0-2 have BatchNorm attention blocks and SE downsamplers)"
        ),
    }
}

/// timm's `make_divisible(v, divisor=1, round_limit=0)`: round half up, at least 1.
fn se_width(channels: u32) -> u32 {
    ((f64::from(channels) / 16.0 + 0.5).floor() as u32).max(1)
}

/// Build the structure of timm `arch` (e.g. `fastvit_mci3`) with `model_args` overriding
/// its defaults the way `timm.create_model(arch, **model_args)` would.
pub fn vision_spec(arch: &str, model_args: Obj<'_>, image_size: u32) -> Result<VisionSpec> {
    let (mut layers, mut dims) = variant_defaults(arch)?;
    let p = model_args.path;
    let list = |key: &str| -> Result<Option<&Vec<Value>>> {
        match model_args.raw(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => bail!("{p}.{key}: expected a list, found {other}"),
        }
    };
    let u32_list = |key: &str| -> Result<Option<Vec<u32>>> {
        list(key)?
            .map(|a| {
                a.iter()
                    .map(|v| as_u32(v).ok_or_else(|| anyhow!("{p}.{key}: bad entry {v}")))
                    .collect()
            })
            .transpose()
    };
    if let Some(l) = u32_list("layers")? {
        layers = l;
    }
    if let Some(d) = u32_list("embed_dims")? {
        dims = d;
    }
    let n = layers.len();
    if n == 0 || n > MAX_STAGES {
        bail!("{p}.layers: {n} stages; 1..={MAX_STAGES} supported");
    }
    if dims.len() != n {
        bail!(
            "{p}: {n} stages in `layers` but {} in `embed_dims`",
            dims.len()
        );
    }
    let per_stage = |key: &str| -> Result<Option<&Vec<Value>>> {
        let a = list(key)?;
        if let Some(a) = a
            && a.len() != n
        {
            bail!("{p}.{key}: {} entries for {n} stages", a.len());
        }
        Ok(a)
    };

    let mut ratios = vec![4.0f64; n];
    if let Some(a) = per_stage("mlp_ratios")? {
        for (r, v) in ratios.iter_mut().zip(a) {
            *r = v
                .as_f64()
                .filter(|x| *x > 0.0)
                .ok_or_else(|| anyhow!("{p}.mlp_ratios: bad entry {v}"))?;
        }
    }
    // mci3 default: attention and RepCPE in the last two stages of five.
    let mut mixers: Vec<TokenMixer> = (0..n)
        .map(|i| {
            if n == 5 && i >= 3 {
                TokenMixer::Attention
            } else {
                TokenMixer::RepMixer
            }
        })
        .collect();
    let mut pos_embs: Vec<bool> = (0..n).map(|i| n == 5 && i >= 3).collect();
    if n != 5 && (model_args.raw("token_mixers").is_none() || model_args.raw("pos_embs").is_none())
    {
        bail!("{p}: with {n} stages, `token_mixers` and `pos_embs` must be given explicitly");
    }
    if let Some(a) = per_stage("token_mixers")? {
        for (m, v) in mixers.iter_mut().zip(a) {
            *m = match v.as_str() {
                Some("repmixer") => TokenMixer::RepMixer,
                Some("attention") => TokenMixer::Attention,
                _ => bail!("{p}.token_mixers: unknown mixer {v} (repmixer or attention)"),
            };
        }
    }
    let mut pos_kernel = 7u32;
    if let Some(a) = per_stage("pos_embs")? {
        // timm takes module factories here, which JSON cannot hold: accept null/false for
        // none and true, a name, or {"spatial_shape": k | [k, k]} for RepCPE.
        for (flag, v) in pos_embs.iter_mut().zip(a) {
            *flag = match v {
                Value::Null | Value::Bool(false) => false,
                Value::Bool(true) | Value::String(_) => true,
                Value::Object(o) => {
                    if let Some(s) = o.get("spatial_shape") {
                        let k = match s {
                            Value::Array(ks) if ks.len() == 2 && ks[0] == ks[1] => as_u32(&ks[0]),
                            other => as_u32(other),
                        }
                        .ok_or_else(|| {
                            anyhow!("{p}.pos_embs: spatial_shape {s} must be a square kernel")
                        })?;
                        pos_kernel = k;
                    }
                    true
                }
                other => bail!("{p}.pos_embs: bad entry {other}"),
            };
        }
    }
    if let Some(a) = per_stage("downsamples")? {
        for (i, v) in a.iter().enumerate() {
            let flag = v
                .as_bool()
                .ok_or_else(|| anyhow!("{p}.downsamples: bad entry {v}"))?;
            // timm downsamples when asked to or when the width changes.
            let effective = flag || (i > 0 && dims[i - 1] != dims[i]);
            if effective != (i > 0) {
                bail!(
                    "{p}.downsamples: only a PatchEmbed before every stage but the first is supported"
                );
            }
        }
    }
    if let Some(a) = per_stage("se_downsamples")?
        && a.iter().any(|v| v.as_bool() != Some(false))
    {
        bail!("{p}.se_downsamples: squeeze-excite in downsamplers is not supported");
    }
    let mixer_kernel = model_args.u32("repmixer_kernel_size")?.unwrap_or(3);
    let down_kernel = model_args.u32("down_patch_size")?.unwrap_or(7);
    if model_args.u32("down_stride")?.is_some_and(|s| s != 2) {
        bail!("{p}.down_stride: only 2 is supported");
    }
    if model_args.bool("lkc_use_act")? == Some(false) {
        bail!(
            "{p}.lkc_use_act: false is not supported (FastViTHD applies GELU after the 7x7 downsample)"
        );
    }
    if model_args.bool("fork_feat")? == Some(true) {
        bail!("{p}.fork_feat: dense-prediction FastViT is not supported");
    }
    let cls_ratio = model_args.f64("cls_ratio")?.unwrap_or(2.0);
    let in_chans = model_args.u32("in_chans")?.unwrap_or(3);
    let layer_scale = match model_args.v.and_then(|m| m.get("layer_scale_init_value")) {
        Some(Value::Null) => false,
        Some(v) if v.as_f64().is_some() => true,
        Some(v) => bail!("{p}.layer_scale_init_value: expected a number or null, found {v}"),
        None => true,
    };
    const KNOWN: &[&str] = &[
        "layers",
        "embed_dims",
        "mlp_ratios",
        "token_mixers",
        "pos_embs",
        "downsamples",
        "se_downsamples",
        "repmixer_kernel_size",
        "down_patch_size",
        "down_stride",
        "lkc_use_act",
        "fork_feat",
        "cls_ratio",
        "in_chans",
        "layer_scale_init_value",
        // No effect on the tensors we read (the train/inference form is detected from
        // tensor names), or only on parts we drop.
        "inference_mode",
        "stem_use_scale_branch",
        "num_classes",
        "global_pool",
        "drop_rate",
        "proj_drop_rate",
        "drop_path_rate",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
    ];
    if let Some(m) = model_args.v
        && let Some(k) = m.keys().find(|k| !KNOWN.contains(&k.as_str()))
    {
        bail!("{p}.{k}: unsupported FastViT argument");
    }

    for (i, (&d, &l)) in dims.iter().zip(&layers).enumerate() {
        if d == 0 {
            bail!("{p}.embed_dims[{i}] is zero");
        }
        if l == 0 {
            bail!("{p}.layers[{i}] is zero");
        }
        // The 7x7 downsample conv has one group per input channel (PyTorch needs the
        // output width to be a multiple of it); FastViTHD doubles the width.
        if i > 0 && !d.is_multiple_of(dims[i - 1]) {
            bail!(
                "{p}.embed_dims: stage {i} width {d} is not a multiple of {}",
                dims[i - 1]
            );
        }
        if mixers[i] == TokenMixer::Attention && !d.is_multiple_of(32) {
            bail!("{p}: attention stage {i} has {d} channels, not a multiple of the head width 32");
        }
    }
    for (name, k) in [
        ("repmixer_kernel_size", mixer_kernel),
        ("down_patch_size", down_kernel),
        ("pos_embs spatial_shape", pos_kernel),
    ] {
        if k.is_multiple_of(2) {
            bail!("{p}.{name}: kernel {k} must be odd");
        }
    }
    if down_kernel < 3 {
        bail!("{p}.down_patch_size: must be at least the small kernel 3");
    }
    // Python's int() truncation, as timm computes the widths.
    let ffn_dims = dims
        .iter()
        .zip(&ratios)
        .map(|(&d, &r)| (f64::from(d) * r) as u32)
        .collect();
    let last = *dims.last().unwrap_or(&0);
    let out_dim = (f64::from(last) * cls_ratio) as u32;
    if out_dim == 0 || !out_dim.is_multiple_of(last) {
        bail!("{p}.cls_ratio: conv_exp width {out_dim} must be a positive multiple of {last}");
    }
    let spec = VisionSpec {
        image_size,
        in_chans,
        layers,
        dims,
        ffn_dims,
        mixers,
        pos_embs,
        mixer_kernel,
        down_kernel,
        pos_kernel,
        ffn_kernel: 7,
        out_dim,
        se_dim: se_width(out_dim),
        head_dim: 32,
        layer_scale,
        norm_eps: 1e-5,
    };
    let stride = 4u32 << (n - 1);
    if image_size == 0 || !image_size.is_multiple_of(stride) {
        bail!("image size {image_size} is not a multiple of the encoder stride {stride}");
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mci3_defaults_are_fastvithd() {
        let s = vision_spec("fastvit_mci3", Obj::empty("m"), 1024).unwrap();
        assert_eq!(s.layers, vec![2, 12, 24, 4, 2]);
        assert_eq!(s.dims, vec![96, 192, 384, 768, 1536]);
        assert_eq!(s.ffn_dims, vec![384, 768, 1536, 3072, 6144]);
        assert_eq!(s.out_dim, 3072);
        assert_eq!(s.se_dim, 192);
        assert_eq!(s.pos_embs, vec![false, false, false, true, true]);
        assert_eq!(s.mixers[3], TokenMixer::Attention);
        assert_eq!(s.mixers[2], TokenMixer::RepMixer);
    }

    #[test]
    fn overrides_and_rejections() {
        let v: Value = serde_json::json!({"layers": [1, 1, 1, 1, 1], "embed_dims": [8, 16, 32, 32, 64],
            "mlp_ratios": [3, 3, 3, 3, 2.5], "inference_mode": false});
        let s = vision_spec(
            "fastvit_mci3.apple_mclip2_dfndr2b",
            Obj::new(Some(&v), "m").unwrap(),
            128,
        )
        .unwrap();
        assert_eq!(s.ffn_dims, vec![24, 48, 96, 96, 160]);
        assert_eq!((s.out_dim, s.se_dim), (128, 8));
        for bad in [
            serde_json::json!({"embed_dims": [8, 16, 24, 48, 96]}),
            serde_json::json!({"embed_dims": [32, 64, 128, 256, 80]}),
            serde_json::json!({"se_downsamples": [false, false, false, true, true]}),
            serde_json::json!({"layers": [1, 1]}),
            serde_json::json!({"act_layer": "relu"}),
        ] {
            assert!(
                vision_spec("fastvit_mci3", Obj::new(Some(&bad), "m").unwrap(), 1024).is_err(),
                "{bad}"
            );
        }
        assert!(vision_spec("fastvit_mci0", Obj::empty("m"), 1024).is_err());
        assert!(vision_spec("fastvit_mci3", Obj::empty("m"), 1000).is_err());
    }
}
