//! x86_64 kernels: the intrinsics ([`simd`]) and the drivers that tile a linear layer
//! over them ([`q8`] for Q8_0 x Q8_0, [`f32`] for the f32-arithmetic formats). Selected at
//! run time from [`Cpu::active`](crate::kernels::cpu::Cpu::active), each bit-identical to
//! the scalar reference.

pub(crate) mod f32;
pub(crate) mod q8;
pub(crate) mod simd;
