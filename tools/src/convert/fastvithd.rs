//! FastViTHD vision tower: maps Apple (`mci.py`) or timm (`fastvit_mci3`) tensor names,
//! in inference or train form, to canonical tensors in canonical kernel layouts.
//!
//! Train-form modules are recognised per module by their branch names and fused with
//! [`crate::convert::reparam`] (spec §2.2); the ConvFFN BatchNorm, which no released
//! checkpoint fuses, is always folded into its depthwise conv.

use anyhow::{Result, bail};
use glimpse_quant::schema::{TokenMixer, VisionConfig, VisionStage};

use super::hf_config::VisionSpec;
use super::hf_store::Store;
use super::model::{CanonTensor, Role};
use super::reparam::{self, BatchNorm, Kernel};

/// Which parameter naming the checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// Apple ml-fastvlm / MobileCLIP: `patch_embed`, `network.{i}`, `conv_exp`, `rbr_*`.
    Apple,
    /// timm `fastvit`: `stem`, `stages.{s}.{downsample,pos_emb,blocks}`, `final_conv`.
    Timm,
}

/// Spellings that differ between the two namings, plus Apple's flat module indices.
struct Names {
    naming: Naming,
    /// Apple `network.{i}` index of each stage's downsampler, RepCPE and block list.
    down_idx: Vec<usize>,
    pos_idx: Vec<usize>,
    blocks_idx: Vec<usize>,
}

impl Names {
    fn new(naming: Naming, spec: &VisionSpec) -> Names {
        // Apple's `network` is one flat list: [blocks0, down1, (pe1,) blocks1, down2, ...]
        // (spec §7.4); timm's checkpoint filter recovers stages the same way.
        let (mut down_idx, mut pos_idx, mut blocks_idx) = (Vec::new(), Vec::new(), Vec::new());
        let mut i = 0;
        for s in 0..spec.layers.len() {
            down_idx.push(i);
            if s > 0 {
                i += 1;
            }
            pos_idx.push(i);
            if spec.pos_embs[s] {
                i += 1;
            }
            blocks_idx.push(i);
            i += 1;
        }
        Names {
            naming,
            down_idx,
            pos_idx,
            blocks_idx,
        }
    }

    fn pick(&self, apple: &'static str, timm: &'static str) -> &'static str {
        match self.naming {
            Naming::Apple => apple,
            Naming::Timm => timm,
        }
    }

    fn stem(&self, i: usize) -> String {
        format!("{}.{i}", self.pick("patch_embed", "stem"))
    }

    fn down(&self, s: usize) -> String {
        match self.naming {
            Naming::Apple => format!("network.{}.proj", self.down_idx[s]),
            Naming::Timm => format!("stages.{s}.downsample.proj"),
        }
    }

    fn pos(&self, s: usize) -> String {
        match self.naming {
            Naming::Apple => format!("network.{}", self.pos_idx[s]),
            Naming::Timm => format!("stages.{s}.pos_emb"),
        }
    }

    fn block(&self, s: usize, b: u32) -> String {
        match self.naming {
            Naming::Apple => format!("network.{}.{b}", self.blocks_idx[s]),
            Naming::Timm => format!("stages.{s}.blocks.{b}"),
        }
    }

    /// A layer-scale parameter: Apple stores a bare tensor, timm a `LayerScale2d.gamma`.
    fn layer_scale(&self, base: &str) -> String {
        match self.naming {
            Naming::Apple => base.to_string(),
            Naming::Timm => format!("{base}.gamma"),
        }
    }
}

/// Reads one vision tower out of a store.
struct Reader<'a> {
    store: &'a Store,
    prefix: &'a str,
    names: Names,
    eps: f64,
    out: Vec<CanonTensor>,
}

impl Reader<'_> {
    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn has(&self, name: &str) -> bool {
        self.store.has(&self.full(name))
    }

    fn f64(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        self.store.f64(&self.full(name), shape)
    }

    fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.store.f32(&self.full(name), shape)
    }

    fn bn(&self, p: &str, c: usize) -> Result<BatchNorm> {
        Ok(BatchNorm {
            gamma: self.f64(&format!("{p}.weight"), &[c])?,
            beta: self.f64(&format!("{p}.bias"), &[c])?,
            mean: self.f64(&format!("{p}.running_mean"), &[c])?,
            var: self.f64(&format!("{p}.running_var"), &[c])?,
            eps: self.eps,
        })
    }

    fn conv_bn(&self, p: &str, out: usize, ipg: usize, k: usize) -> Result<Kernel> {
        let w = self.f64(&format!("{p}.conv.weight"), &[out, ipg, k, k])?;
        Ok(reparam::fuse_conv_bn(
            out,
            ipg,
            k,
            &w,
            &self.bn(&format!("{p}.bn"), out)?,
        ))
    }

    fn fused(&self, p: &str, fused: &str, out: usize, ipg: usize, k: usize) -> Result<Kernel> {
        Ok(Kernel {
            out,
            in_per_group: ipg,
            k,
            w: self.f64(&format!("{p}.{fused}.weight"), &[out, ipg, k, k])?,
            b: self.f64(&format!("{p}.{fused}.bias"), &[out])?,
        })
    }

    /// A MobileOneBlock's conv (SE and activation are separate): `reparam_conv`, or the
    /// sum of its train-form conv, scale and identity branches (spec §2.2 items 1-4).
    fn mobileone(
        &self,
        p: &str,
        cin: usize,
        cout: usize,
        k: usize,
        groups: usize,
        stride1: bool,
    ) -> Result<Kernel> {
        let ipg = cin / groups;
        if self.has(&format!("{p}.reparam_conv.weight")) {
            return self.fused(p, "reparam_conv", cout, ipg, k);
        }
        let (conv, scale, skip) = match self.names.naming {
            Naming::Apple => ("rbr_conv", "rbr_scale", "rbr_skip"),
            Naming::Timm => ("conv_kxk", "conv_scale", "identity"),
        };
        let mut acc = Kernel::zeros(cout, ipg, k);
        let mut branches = 0;
        while self.has(&format!("{p}.{conv}.{branches}.conv.weight")) {
            acc.add(&self.conv_bn(&format!("{p}.{conv}.{branches}"), cout, ipg, k)?);
            branches += 1;
        }
        if self.has(&format!("{p}.{scale}.conv.weight")) {
            acc.add(&self.conv_bn(&format!("{p}.{scale}"), cout, ipg, 1)?);
            branches += 1;
        }
        if self.has(&format!("{p}.{skip}.weight")) {
            if cin != cout || !stride1 {
                bail!(
                    "tensor `{}`: an identity branch needs equal widths and stride 1",
                    self.full(&format!("{p}.{skip}.weight"))
                );
            }
            acc.add(&reparam::fuse_identity_bn(
                cout,
                ipg,
                k,
                &self.bn(&format!("{p}.{skip}"), cout)?,
            ));
            branches += 1;
        }
        if branches == 0 {
            bail!(
                "missing tensor `{}`",
                self.full(&format!("{p}.reparam_conv.weight"))
            );
        }
        Ok(acc)
    }

    fn push(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>, role: Role) {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        self.out.push(CanonTensor {
            name,
            shape: shape.iter().map(|&d| d as u32).collect(),
            data,
            role,
        });
    }

    /// A conv with one input channel per group, as `[k, k, C]`.
    fn push_hwc(&mut self, name: &str, k: &Kernel) {
        debug_assert_eq!(k.in_per_group, 1);
        let w = reparam::to_f32(&reparam::dw_to_hwc(&k.w, k.out, k.k, k.k));
        self.push(
            format!("{name}.weight"),
            vec![k.k, k.k, k.out],
            w,
            Role::Keep,
        );
        self.push(
            format!("{name}.bias"),
            vec![k.out],
            reparam::to_f32(&k.b),
            Role::Keep,
        );
    }

    /// A 1x1 conv as an `[O, I]` matrix.
    fn push_matrix(&mut self, name: &str, k: &Kernel) {
        debug_assert_eq!(k.k, 1);
        self.push(
            format!("{name}.weight"),
            vec![k.out, k.in_per_group],
            reparam::to_f32(&k.w),
            Role::Quantize,
        );
        self.push(
            format!("{name}.bias"),
            vec![k.out],
            reparam::to_f32(&k.b),
            Role::Keep,
        );
    }

    /// A plain 1x1 conv or linear layer with bias, `shape` being the stored weight shape.
    fn linear(&mut self, src: &str, dst: &str, shape: &[usize]) -> Result<()> {
        let w = self.f32(&format!("{src}.weight"), shape)?;
        let b = self.f32(&format!("{src}.bias"), &shape[..1])?;
        self.push(
            format!("{dst}.weight"),
            vec![shape[0], shape[1]],
            w,
            Role::Quantize,
        );
        self.push(format!("{dst}.bias"), vec![shape[0]], b, Role::Keep);
        Ok(())
    }

    fn scale(&mut self, src: &str, dst: String, c: usize, present: bool) -> Result<()> {
        let v = if present {
            self.f32(&self.names.layer_scale(src), &[c, 1, 1])?
        } else {
            vec![1.0; c]
        };
        self.push(dst, vec![c], v, Role::Keep);
        Ok(())
    }

    fn stem(&mut self, spec: &VisionSpec) -> Result<()> {
        let (cin, c) = (spec.in_chans as usize, spec.dims[0] as usize);
        let s0 = self.mobileone(&self.names.stem(0), cin, c, 3, 1, false)?;
        let w = reparam::to_f32(&reparam::oihw_to_ohwi(&s0.w, c, cin, 3, 3));
        self.push(
            "vision.stem.0.weight".into(),
            vec![c, 3, 3, cin],
            w,
            Role::Keep,
        );
        self.push(
            "vision.stem.0.bias".into(),
            vec![c],
            reparam::to_f32(&s0.b),
            Role::Keep,
        );
        let s1 = self.mobileone(&self.names.stem(1), c, c, 3, c, false)?;
        self.push_hwc("vision.stem.1", &s1);
        let s2 = self.mobileone(&self.names.stem(2), c, c, 1, 1, true)?;
        self.push_matrix("vision.stem.2", &s2);
        Ok(())
    }

    fn downsample(&mut self, s: usize, spec: &VisionSpec) -> Result<()> {
        let (co, k) = (spec.dims[s] as usize, spec.down_kernel as usize);
        let p = self.names.down(s);
        let lk_p = format!("{p}.0");
        let (fused, large) = match self.names.naming {
            Naming::Apple => ("lkb_reparam", "lkb_origin"),
            Naming::Timm => ("reparam_conv", "large_conv"),
        };
        // Grouped with one input channel per group: output o reads input o / (co / ci).
        let lk = if self.has(&format!("{lk_p}.{fused}.weight")) {
            self.fused(&lk_p, fused, co, 1, k)?
        } else if self.has(&format!("{lk_p}.{large}.conv.weight")) {
            let mut lk = self.conv_bn(&format!("{lk_p}.{large}"), co, 1, k)?;
            if self.has(&format!("{lk_p}.small_conv.conv.weight")) {
                lk.add(&self.conv_bn(&format!("{lk_p}.small_conv"), co, 1, 3)?);
            }
            lk
        } else {
            bail!(
                "missing tensor `{}`",
                self.full(&format!("{lk_p}.{fused}.weight"))
            );
        };
        self.push_hwc(&format!("vision.stages.{s}.down.lk"), &lk);
        let pw = self.mobileone(&format!("{p}.1"), co, co, 1, 1, true)?;
        self.push_matrix(&format!("vision.stages.{s}.down.pw"), &pw);
        Ok(())
    }

    fn pos_emb(&mut self, s: usize, spec: &VisionSpec) -> Result<()> {
        let (c, k) = (spec.dims[s] as usize, spec.pos_kernel as usize);
        let p = self.names.pos(s);
        let train = match self.names.naming {
            Naming::Apple => "pe",
            Naming::Timm => "pos_enc",
        };
        let kernel = if self.has(&format!("{p}.reparam_conv.weight")) {
            self.fused(&p, "reparam_conv", c, 1, k)?
        } else if self.has(&format!("{p}.{train}.weight")) {
            // Train form is `x + dwconv(x)`: fold the residual in as an identity tap.
            let mut pe = self.fused(&p, train, c, 1, k)?;
            pe.add(&reparam::identity(c, 1, k));
            pe
        } else {
            bail!(
                "missing tensor `{}`",
                self.full(&format!("{p}.reparam_conv.weight"))
            );
        };
        self.push_hwc(&format!("vision.stages.{s}.pos"), &kernel);
        Ok(())
    }

    fn repmixer(
        &mut self,
        p: &str,
        dst: &str,
        c: usize,
        k: usize,
        layer_scale: bool,
    ) -> Result<()> {
        let tm = format!("{p}.token_mixer");
        let kernel = if self.has(&format!("{tm}.reparam_conv.weight")) {
            self.fused(&tm, "reparam_conv", c, 1, k)?
        } else {
            let mixer = self.mobileone(&format!("{tm}.mixer"), c, c, k, c, true)?;
            let norm = self.mobileone(&format!("{tm}.norm"), c, c, k, c, true)?;
            let ls = if layer_scale {
                Some(self.f64(
                    &self.names.layer_scale(&format!("{tm}.layer_scale")),
                    &[c, 1, 1],
                )?)
            } else {
                None
            };
            reparam::repmixer(&mixer, &norm, ls.as_deref())
        };
        self.push_hwc(&format!("{dst}.mixer"), &kernel);
        Ok(())
    }

    fn attention(&mut self, p: &str, dst: &str, c: usize) -> Result<()> {
        let nw = self.f32(&format!("{p}.norm.weight"), &[c])?;
        let nb = self.f32(&format!("{p}.norm.bias"), &[c])?;
        self.push(format!("{dst}.norm.weight"), vec![c], nw, Role::Keep);
        self.push(format!("{dst}.norm.bias"), vec![c], nb, Role::Keep);
        let qkv = self.f32(&format!("{p}.token_mixer.qkv.weight"), &[3 * c, c])?;
        self.push(
            format!("{dst}.attn.qkv.weight"),
            vec![3 * c, c],
            qkv,
            Role::Quantize,
        );
        self.linear(
            &format!("{p}.token_mixer.proj"),
            &format!("{dst}.attn.proj"),
            &[c, c],
        )
    }

    fn ffn(&mut self, p: &str, dst: &str, c: usize, h: usize, k: usize) -> Result<()> {
        let f = format!("{p}.{}", self.names.pick("convffn", "mlp"));
        // The ConvFFN's conv has no bias; its BatchNorm is folded in (spec §1.2).
        let dw = self.conv_bn(&format!("{f}.conv"), c, 1, k)?;
        self.push_hwc(&format!("{dst}.ffn.dw"), &dw);
        self.linear(
            &format!("{f}.fc1"),
            &format!("{dst}.ffn.fc1"),
            &[h, c, 1, 1],
        )?;
        self.linear(
            &format!("{f}.fc2"),
            &format!("{dst}.ffn.fc2"),
            &[c, h, 1, 1],
        )
    }

    fn stage(&mut self, s: usize, spec: &VisionSpec) -> Result<()> {
        if s > 0 {
            self.downsample(s, spec)?;
        }
        if spec.pos_embs[s] {
            self.pos_emb(s, spec)?;
        }
        let (c, h) = (spec.dims[s] as usize, spec.ffn_dims[s] as usize);
        for b in 0..spec.layers[s] {
            let p = self.names.block(s, b);
            let dst = format!("vision.stages.{s}.blocks.{b}");
            match spec.mixers[s] {
                TokenMixer::RepMixer => {
                    self.repmixer(&p, &dst, c, spec.mixer_kernel as usize, spec.layer_scale)?;
                    self.ffn(&p, &dst, c, h, spec.ffn_kernel as usize)?;
                    self.scale(
                        &format!("{p}.layer_scale"),
                        format!("{dst}.ffn_scale"),
                        c,
                        spec.layer_scale,
                    )?;
                }
                TokenMixer::Attention => {
                    self.attention(&p, &dst, c)?;
                    self.scale(
                        &format!("{p}.layer_scale_1"),
                        format!("{dst}.attn_scale"),
                        c,
                        spec.layer_scale,
                    )?;
                    self.ffn(&p, &dst, c, h, spec.ffn_kernel as usize)?;
                    self.scale(
                        &format!("{p}.layer_scale_2"),
                        format!("{dst}.ffn_scale"),
                        c,
                        spec.layer_scale,
                    )?;
                } // TokenMixer is exhaustive today; a new mixer needs its own mapping.
            }
        }
        Ok(())
    }

    fn head(&mut self, spec: &VisionSpec) -> Result<()> {
        let (ci, co, se) = (
            *spec.dims.last().unwrap_or(&0) as usize,
            spec.out_dim as usize,
            spec.se_dim as usize,
        );
        let p = self.names.pick("conv_exp", "final_conv");
        let conv = self.mobileone(p, ci, co, 3, ci, true)?;
        self.push_hwc("vision.head.conv", &conv);
        let (reduce, expand) = match self.names.naming {
            Naming::Apple => ("se.reduce", "se.expand"),
            Naming::Timm => ("se.fc1", "se.fc2"),
        };
        self.linear(
            &format!("{p}.{reduce}"),
            "vision.head.se.reduce",
            &[se, co, 1, 1],
        )?;
        self.linear(
            &format!("{p}.{expand}"),
            "vision.head.se.expand",
            &[co, se, 1, 1],
        )
    }
}

/// Read the vision tower under `prefix` and return its canonical tensors. The CLIP /
/// classifier head (`head.*`) is marked ignored: the VLM never uses it.
pub fn load(
    store: &Store,
    prefix: &str,
    naming: Naming,
    spec: &VisionSpec,
) -> Result<Vec<CanonTensor>> {
    let mut r = Reader {
        store,
        prefix,
        names: Names::new(naming, spec),
        eps: spec.norm_eps,
        out: Vec::new(),
    };
    r.stem(spec)?;
    for s in 0..spec.layers.len() {
        r.stage(s, spec)?;
    }
    r.head(spec)?;
    let head = format!("{prefix}head.");
    let unused: Vec<String> = store.names_with_prefix(&head).map(str::to_string).collect();
    for n in unused {
        store.ignore(&n);
    }
    Ok(r.out)
}

/// The image-layout description of a spec.
pub fn vision_config(spec: &VisionSpec) -> Result<VisionConfig> {
    let mut stages = heapless::Vec::new();
    for s in 0..spec.layers.len() {
        stages
            .push(VisionStage {
                depth: spec.layers[s],
                dim: spec.dims[s],
                ffn_dim: spec.ffn_dims[s],
                mixer: spec.mixers[s],
                pos_emb: spec.pos_embs[s],
            })
            .map_err(|_| anyhow::anyhow!("too many vision stages"))?;
    }
    Ok(VisionConfig {
        image_size: spec.image_size,
        in_channels: spec.in_chans,
        stages,
        head_dim: spec.head_dim,
        mixer_kernel: spec.mixer_kernel,
        ffn_kernel: spec.ffn_kernel,
        down_kernel: spec.down_kernel,
        pos_kernel: spec.pos_kernel,
        out_dim: spec.out_dim,
        se_dim: spec.se_dim,
        norm_eps: spec.norm_eps as f32,
    })
}
