"""What every Triton module shares: the interpreter flag, dot operands and exact casts.

The CPU interpreter (TRITON_INTERPRET=1) computes tl.dot on bf16/fp8 operands wrongly (numpy has
no such types), rounds fp32 -> bf16 toward zero and drops the carry into the exponent when it
rounds fp32 -> fp8 (7.9 -> 4.0). Under it, `dot_operand` hands tl.dot fp32 operands (which hold
bf16 and fp8 values exactly) and `exact_cast` rounds to nearest even by hand before converting
(the interpreter's own conversion is exact on values already on the grid). On a GPU both are
the native conversions. Kernels take `INTERPRET` as a constexpr argument and pass it on.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from streamlab.kernels.quant import FP8_MAX

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_FP8_MAX = tl.constexpr(FP8_MAX)


@triton.jit
def dot_operand(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """`x` as a tl.dot operand of `dtype` on the GPU, fp32 in the interpreter."""
    if INTERPRET:
        return x.to(tl.float32)
    return x.to(dtype)


@triton.jit
def _round_e4m3(x):
    """fp32 x rounded to the nearest e4m3 value (ties to even), still fp32."""
    bits = x.to(tl.uint32, bitcast=True)
    sign = bits & 0x80000000
    mag = bits ^ sign
    normal = (mag + 0x7FFFF + ((mag >> 20) & 1)) & 0x7FF00000  # keep 3 mantissa bits
    # below 2^-6 e4m3 is subnormal with a fixed step of 2^-9: the ulp of 1.5 * 2^14 in fp32
    sub = ((tl.abs(x) + 24576.0) - 24576.0).to(tl.uint32, bitcast=True)
    return (tl.where(mag < 0x3C800000, sub, normal) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _round_bf16(x):
    """fp32 x rounded to the nearest bf16 value (ties to even), still fp32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def exact_cast(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 -> dtype as torch casts: round to nearest even, saturating for e4m3fn (`to_fp8`)."""
    if dtype == tl.float8e4nv:
        x = tl.clamp(x, -_FP8_MAX, _FP8_MAX)
        if INTERPRET:
            x = _round_e4m3(x)
    elif dtype == tl.bfloat16:
        if INTERPRET:
            x = _round_bf16(x)
    return x.to(dtype)
