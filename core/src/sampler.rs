//! Next-token selection: repetition penalty, greedy, temperature, top-k and top-p sampling
//! with a seeded deterministic RNG, and the set of stop tokens.
//!
//! Order of operations (HF `generate`'s): repetition penalty on the raw logits (llama.cpp
//! semantics: every distinct id of the last `repeat_last_n` has a positive logit divided
//! by the penalty and a negative one multiplied), then temperature, then top-k, then
//! top-p over the renormalized survivors, then one draw. Temperature 0 (or top-k 1) is
//! greedy: the first index of the largest logit.

use glimpse_quant::schema::DecoderConfig;

use crate::error::Error;

/// Sampling settings.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SamplerConfig {
    /// Softmax temperature; `<= 0` means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`;
    /// 1 (or more) keeps all.
    pub top_p: f32,
    /// Repetition penalty; 1 is none.
    pub repeat_penalty: f32,
    /// How many recent ids the penalty looks at.
    pub repeat_last_n: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// Greedy, no penalty.
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Whether this configuration always picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0 || self.top_k == 1
    }
}

/// PCG32 (XSH-RR): small, fast, and the same sequence on every target for a given seed.
#[derive(Clone, Debug)]
pub struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    const MUL: u64 = 6_364_136_223_846_793_005;

    /// A generator seeded with `seed` (stream 0x5851f42d4c957f2d, an arbitrary odd
    /// constant so seed 0 is a fine seed).
    pub fn new(seed: u64) -> Self {
        let mut r = Self {
            state: 0,
            inc: (0x5851_f42d_4c95_7f2d << 1) | 1,
        };
        r.next_u32();
        r.state = r.state.wrapping_add(seed);
        r.next_u32();
        r
    }

    /// Next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(Self::MUL).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// Uniform in `[0, 1)` with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }
}

/// NaN sorts as the least likely logit, so a corrupt value is never picked over a number.
fn key(x: f32) -> f32 {
    if x.is_nan() { f32::NEG_INFINITY } else { x }
}

/// Index of the largest logit (the first on ties); `None` for an empty slice.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        let x = key(x);
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// llama.cpp's repetition penalty: for each distinct id among `recent`, a positive logit
/// is divided by `penalty` and a negative one multiplied. Ids outside `logits` are ignored.
pub fn apply_repetition_penalty(logits: &mut [f32], recent: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for (i, &id) in recent.iter().enumerate() {
        // Distinct ids only: an id seen earlier in the window was already penalized.
        if recent.get(..i).is_some_and(|seen| seen.contains(&id)) {
            continue;
        }
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Picks tokens from logits according to a [`SamplerConfig`].
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Pcg32,
}

impl Sampler {
    /// A sampler whose RNG starts from `cfg.seed`.
    pub fn new(cfg: SamplerConfig) -> Self {
        Self {
            rng: Pcg32::new(cfg.seed),
            cfg,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Choose the next token. `logits` (one per vocabulary entry) is modified in place by
    /// the penalty; `history` is every id so far (the penalty looks at its tail);
    /// `scratch` needs one word per logit unless the config is greedy (it may be empty
    /// then).
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        scratch: &mut [u32],
    ) -> Result<u32, Error> {
        if logits.is_empty() {
            return Err(Error::EmptyInput);
        }
        let window = history.len().saturating_sub(self.cfg.repeat_last_n);
        let recent = history.get(window..).unwrap_or(&[]);
        apply_repetition_penalty(logits, recent, self.cfg.repeat_penalty);
        if self.cfg.is_greedy() {
            return argmax(logits).ok_or(Error::EmptyInput);
        }
        let n = logits.len();
        let have = scratch.len();
        let cand = scratch.get_mut(..n).ok_or(Error::Length {
            what: "sampler scratch",
            expected: n,
            got: have,
        })?;
        for (i, c) in cand.iter_mut().enumerate() {
            *c = i as u32;
        }
        let logit = |id: u32| {
            key(logits
                .get(id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY))
        };
        // Most likely first; ties by id so the order (and so the draw) is deterministic.
        let order = |a: &u32, b: &u32| logit(*b).total_cmp(&logit(*a)).then(a.cmp(b));
        let k = if self.cfg.top_k > 0 && self.cfg.top_k < n {
            cand.select_nth_unstable_by(self.cfg.top_k - 1, order);
            self.cfg.top_k
        } else {
            n
        };
        let cand = cand.get_mut(..k).unwrap_or(&mut []);
        cand.sort_unstable_by(order);
        let Some(&top) = cand.first() else {
            return Err(Error::EmptyInput);
        };
        let max = logit(top);
        if max == f32::NEG_INFINITY {
            return Ok(top);
        }
        let inv_t = 1.0 / self.cfg.temperature;
        let weight = |id: u32| libm::expf((logit(id) - max) * inv_t);
        let total: f32 = cand.iter().map(|&id| weight(id)).sum();
        // Top-p: the shortest prefix whose mass reaches top_p (always at least one).
        let mut keep = cand.len();
        if self.cfg.top_p < 1.0 {
            let target = self.cfg.top_p * total;
            let mut acc = 0.0f32;
            for (i, &id) in cand.iter().enumerate() {
                acc += weight(id);
                if acc >= target {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept = cand.get(..keep).unwrap_or(&[]);
        let mass: f32 = kept.iter().map(|&id| weight(id)).sum();
        let mut u = self.rng.next_f32() * mass;
        for &id in kept {
            u -= weight(id);
            if u < 0.0 {
                return Ok(id);
            }
        }
        // Rounding can leave u a hair above zero after the last candidate.
        Ok(kept.last().copied().unwrap_or(top))
    }
}

/// Most stop ids a [`StopTokens`] holds.
pub const MAX_STOP: usize = 8;

/// Ids that end generation: the decoder's eos ids, the tokenizer's eos, `<|im_end|>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopTokens {
    ids: heapless::Vec<u32, MAX_STOP>,
}

impl StopTokens {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `id` (duplicates are ignored); false when the set is full.
    pub fn add(&mut self, id: u32) -> bool {
        if self.ids.contains(&id) {
            return true;
        }
        self.ids.push(id).is_ok()
    }

    /// The stop ids a model implies: the decoder config's eos ids, the tokenizer's eos
    /// and, when the vocabulary has it, `<|im_end|>`.
    pub fn for_model(
        decoder: Option<&DecoderConfig>,
        tokenizer: Option<&crate::tokenizer::Tokenizer<'_>>,
    ) -> Self {
        let mut s = Self::new();
        if let Some(d) = decoder {
            for &id in &d.eos_token_ids {
                s.add(id);
            }
        }
        if let Some(t) = tokenizer {
            if let Some(e) = t.eos() {
                s.add(e);
            }
            if let Some(id) = t.find_token(b"<|im_end|>") {
                s.add(id);
            }
        }
        s
    }

    /// Whether `id` stops generation.
    pub fn contains(&self, id: u32) -> bool {
        self.ids.contains(&id)
    }

    /// The ids.
    pub fn as_slice(&self) -> &[u32] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn logits() -> Vec<f32> {
        vec![0.5, 2.0, -1.0, 1.9, 0.0, 2.0, -3.0, 1.0]
    }

    #[test]
    fn greedy_is_first_argmax() {
        let mut l = logits();
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&mut l, &[], &mut []).unwrap(), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(s.sample(&mut [], &[], &mut []), Err(Error::EmptyInput));
    }

    #[test]
    fn top_k_one_and_zero_temperature_are_greedy() {
        let mut scratch = vec![0u32; 8];
        for cfg in [
            SamplerConfig {
                temperature: 1.5,
                top_k: 1,
                seed: 7,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                temperature: 0.0,
                top_k: 5,
                top_p: 0.5,
                seed: 7,
                ..SamplerConfig::default()
            },
        ] {
            let mut s = Sampler::new(cfg);
            for _ in 0..20 {
                let mut l = logits();
                assert_eq!(s.sample(&mut l, &[], &mut scratch).unwrap(), 1);
            }
        }
    }

    #[test]
    fn same_seed_same_tokens_and_scratch_is_checked() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            seed: 42,
            ..SamplerConfig::default()
        };
        let run = |cfg: SamplerConfig| -> Vec<u32> {
            let mut s = Sampler::new(cfg);
            let mut scratch = vec![0u32; 8];
            (0..64)
                .map(|_| s.sample(&mut logits(), &[], &mut scratch).unwrap())
                .collect()
        };
        let a = run(cfg);
        assert_eq!(a, run(cfg));
        assert_ne!(a, run(SamplerConfig { seed: 43, ..cfg }));
        // At temperature 1 several tokens must show up in 64 draws.
        let distinct = (0..8).filter(|i| a.contains(i)).count();
        assert!(distinct >= 3, "{a:?}");
        let mut s = Sampler::new(cfg);
        assert_eq!(
            s.sample(&mut logits(), &[], &mut [0u32; 3]),
            Err(Error::Length {
                what: "sampler scratch",
                expected: 8,
                got: 3
            })
        );
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let mut scratch = vec![0u32; 8];
        // top-k 3 keeps ids 1, 5 (2.0) and 3 (1.9).
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 3,
            seed: 1,
            ..SamplerConfig::default()
        });
        for _ in 0..200 {
            let id = s.sample(&mut logits(), &[], &mut scratch).unwrap();
            assert!([1, 5, 3].contains(&id), "{id}");
        }
        // Probabilities at T=1: e^2, e^2, e^1.9, e^1, ... The two 2.0 tokens hold
        // 2e^2 / sum; choose p just below and just above that mass.
        let l = logits();
        let z: f32 = l.iter().map(|x| x.exp()).sum();
        let two = 2.0 * 2.0f32.exp() / z;
        let three = two + 1.9f32.exp() / z;
        for (p, allowed) in [(two - 1e-3, &[1u32, 5][..]), (two + 1e-3, &[1, 5, 3][..])] {
            let mut s = Sampler::new(SamplerConfig {
                temperature: 1.0,
                top_p: p,
                seed: 3,
                ..SamplerConfig::default()
            });
            let mut seen = Vec::new();
            for _ in 0..400 {
                let id = s.sample(&mut logits(), &[], &mut scratch).unwrap();
                assert!(allowed.contains(&id), "p={p} id={id}");
                if !seen.contains(&id) {
                    seen.push(id);
                }
            }
            // Every kept token is reachable: the set is the smallest over p, not smaller.
            assert_eq!(seen.len(), allowed.len(), "p={p} seen={seen:?}");
        }
        assert!(three < 1.0);
    }

    #[test]
    fn repetition_penalty_math() {
        let mut l = vec![2.0, -1.0, 0.5, 3.0];
        // id 0 twice: penalized once; id 1 negative: multiplied; id 3 outside the window.
        let history = [3, 0, 1, 0];
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            repeat_last_n: 3,
            ..SamplerConfig::default()
        });
        let id = s.sample(&mut l, &history, &mut []).unwrap();
        assert_eq!(l, vec![1.0, -2.0, 0.5, 3.0]);
        assert_eq!(id, 3);
        // With id 3 in the window too it drops to 1.5 and 0.5 < 1.0 < 1.5: still 3.
        let mut l = vec![2.0, -1.0, 0.5, 3.0];
        apply_repetition_penalty(&mut l, &[3, 0, 99], 2.0);
        assert_eq!(l, vec![1.0, -1.0, 0.5, 1.5]);
    }

    #[test]
    fn rng_is_reproducible_and_spread() {
        let mut a = Pcg32::new(9);
        let mut b = Pcg32::new(9);
        let xs: Vec<f32> = (0..1000).map(|_| a.next_f32()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert_eq!(xs, (0..1000).map(|_| b.next_f32()).collect::<Vec<_>>());
        let mean = xs.iter().sum::<f32>() / 1000.0;
        // The mean of 1000 uniforms has sd 0.29/sqrt(1000) = 0.009; 0.05 is > 5 sd.
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }

    #[test]
    fn stop_tokens() {
        let mut s = StopTokens::new();
        assert!(s.add(2) && s.add(2) && s.add(5));
        assert!(s.contains(5) && !s.contains(3));
        assert_eq!(s.as_slice(), &[2, 5]);
    }
}
