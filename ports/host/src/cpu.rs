//! CPU feature detection for the host: asks the CPU (through std's detection macros)
//! which extensions the core's kernels may use, and installs the answer in the core.

use glimpse_core::kernels::cpu::{self, Cpu};

/// Environment variable that narrows the installed features: `scalar` (none), a
/// comma-separated list of feature names (`avx2,f16c,fma`), or unset / `native` for
/// everything detected. Names the CPU lacks are ignored.
pub const CPU_ENV: &str = "GLIMPSE_CPU";

/// The features of the running CPU that [`Cpu`] knows about.
pub fn detect() -> Cpu {
    #[allow(unused_mut)]
    let mut c = Cpu::SCALAR;
    #[cfg(target_arch = "x86_64")]
    {
        let pairs = [
            (std::arch::is_x86_feature_detected!("avx2"), Cpu::AVX2),
            (std::arch::is_x86_feature_detected!("fma"), Cpu::FMA),
            (std::arch::is_x86_feature_detected!("f16c"), Cpu::F16C),
            (std::arch::is_x86_feature_detected!("avx512f"), Cpu::AVX512F),
            (
                std::arch::is_x86_feature_detected!("avx512bw"),
                Cpu::AVX512BW,
            ),
            (
                std::arch::is_x86_feature_detected!("avx512vl"),
                Cpu::AVX512VL,
            ),
            (
                std::arch::is_x86_feature_detected!("avx512vnni"),
                Cpu::AVX512VNNI,
            ),
            (std::arch::is_x86_feature_detected!("avxvnni"), Cpu::AVXVNNI),
        ];
        for (has, f) in pairs {
            if has {
                c = c.union(f);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            c = c.union(Cpu::NEON);
        }
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            c = c.union(Cpu::DOTPROD);
        }
    }
    c
}

/// Parse a [`CPU_ENV`]-style request: `None` for "everything" (`native` or empty).
pub fn parse_request(s: &str) -> Result<Option<Cpu>, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("native") {
        return Ok(None);
    }
    if s.eq_ignore_ascii_case("scalar") {
        return Ok(Some(Cpu::SCALAR));
    }
    let mut c = Cpu::SCALAR;
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let f = Cpu::NAMED
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(f, _)| *f)
            .ok_or_else(|| {
                let known: Vec<&str> = Cpu::NAMED.iter().map(|(_, n)| *n).collect();
                format!(
                    "unknown CPU feature {name:?} (known: scalar, native, {})",
                    known.join(", ")
                )
            })?;
        c = c.union(f);
    }
    Ok(Some(c))
}

/// Detect the CPU's features, narrow them to `request` (if any), install them in the
/// core, and return what the kernels now use.
///
/// Installing only adds features, so call this once, before the first kernel runs, to
/// narrow; a later call with a wider request widens.
pub fn install(request: Option<Cpu>) -> Cpu {
    let detected = detect();
    let chosen = request.map_or(detected, |r| r.intersect(detected));
    // SAFETY: every feature in `chosen` was reported by the CPU itself (`detect`).
    unsafe { cpu::install(chosen) };
    Cpu::active()
}

/// [`install`] with the request read from [`CPU_ENV`]; an unparsable value is an error.
pub fn install_from_env() -> Result<Cpu, String> {
    let req = match std::env::var(CPU_ENV) {
        Ok(v) => parse_request(&v).map_err(|e| format!("{CPU_ENV}: {e}"))?,
        Err(_) => None,
    };
    Ok(install(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request("native").unwrap(), None);
        assert_eq!(parse_request("").unwrap(), None);
        assert_eq!(parse_request("scalar").unwrap(), Some(Cpu::SCALAR));
        assert_eq!(
            parse_request("avx2, f16c").unwrap(),
            Some(Cpu::AVX2.union(Cpu::F16C))
        );
        let e = parse_request("avx3").unwrap_err();
        assert!(e.contains("avx3") && e.contains("avx512vnni"), "{e}");
    }

    #[test]
    fn installed_features_are_detected_ones() {
        let active = install(None);
        assert!(active.contains(detect()));
        // What is active beyond the compiled-in baseline was detected.
        assert!(detect().contains(active.without(Cpu::compiled())));
    }
}
