"""Fused memory-bound kernels around the GEMMs: residual add + LayerNorm, (bias +) exact GELU,
gated GELU, and per-token FP8 quantisation of activations.

Each public function runs one Triton kernel on CUDA (or under Triton's interpreter,
``TRITON_INTERPRET=1``, which is how the CPU tests check them) and the same math as plain
PyTorch elsewhere (CPU, no Triton, or ``VIRNUCDIST_FUSED=0``). Statistics and GELU are computed in
fp32; outputs are rounded once, to the output dtype.

FP8: ``quant=True`` makes a kernel emit its output as e4m3 (``torch.float8_e4m3fn``) with one fp32
scale per row (token): ``scale = amax(|row|) / 448``, ``q = round_to_nearest_even(row / scale)``;
``q * scale`` approximates the row. The rounding is done in fp32 by bit arithmetic, so the bytes
equal ``torch``'s cast exactly (Triton's interpreter mis-rounds fp8 casts at binade edges; the
arithmetic is free in these memory-bound kernels).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

__all__ = ["add_layer_norm", "gelu", "gated_gelu", "quant_rows", "dequant_rows", "enabled",
           "set_enabled", "uses_triton", "FP8_MAX"]

FP8_MAX = 448.0  # largest finite e4m3fn value
FP8_DTYPE = torch.float8_e4m3fn
_AMAX_FLOOR = 1e-12  # an all-zero row gets a tiny scale and zero codes

_ENABLED = os.environ.get("VIRNUCDIST_FUSED", "1") != "0"
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def enabled() -> bool:
    """Whether the Triton kernels may run (``VIRNUCDIST_FUSED=0`` or :func:`set_enabled` turn them off)."""
    return _ENABLED


def set_enabled(on: bool) -> None:
    """Switch the fused kernels on/off process-wide (benchmarks compare both paths in one process)."""
    global _ENABLED
    _ENABLED = bool(on)


try:
    import triton
    import triton.language as tl
except Exception:  # no Triton: the torch path runs
    triton = None

if triton is not None:
    @triton.jit
    def e4m3_round(v):
        """fp32 -> the nearest e4m3fn value (ties to even, saturating at +-448), still as fp32."""
        v = tl.minimum(tl.maximum(v, -448.0), 448.0)
        b = v.to(tl.int32, bitcast=True)
        # normals: keep 3 of fp32's 23 mantissa bits, round half to even (carries into the exponent)
        n = ((b + 0x7FFFF + ((b >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
        # subnormals (|v| < 2^-6): multiples of 2^-9, by the add/subtract of 1.5 * 2^14
        s = (tl.abs(v) + 24576.0) - 24576.0
        s = tl.where(b < 0, -s, s)
        return tl.where(tl.abs(v) < 0.015625, s, n)

    @triton.jit
    def to_e4m3(v, EMULATE: tl.constexpr):
        """fp32 -> e4m3fn codes: the GPU's own saturating round-to-nearest-even conversion, or its
        bit-exact emulation under the interpreter (which mis-rounds fp8 casts at binade edges)."""
        if EMULATE:
            return e4m3_round(v).to(tl.float8e4nv)
        return tl.minimum(tl.maximum(v, -448.0), 448.0).to(tl.float8e4nv)

    @triton.jit
    def gelu_f32(x):
        return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))

    @triton.jit
    def add_ln_kernel(x_ptr, d_ptr, db_ptr, w_ptr, b_ptr, r_ptr, y_ptr, s_ptr, D, eps,
                      HAS_DELTA: tl.constexpr, HAS_DBIAS: tl.constexpr, WRITE_SUM: tl.constexpr,
                      QUANT: tl.constexpr, BLOCK_D: tl.constexpr, EMULATE: tl.constexpr = False):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        m = cols < D
        x = tl.load(x_ptr + row * D + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_DELTA:
            d = tl.load(d_ptr + row * D + cols, mask=m, other=0.0).to(tl.float32)
            if HAS_DBIAS:
                d += tl.load(db_ptr + cols, mask=m, other=0.0).to(tl.float32)
            # the residual stream keeps its dtype: round the sum as the eager ``x + delta`` does
            x = (x + d).to(r_ptr.dtype.element_ty).to(tl.float32)
            if WRITE_SUM:
                tl.store(r_ptr + row * D + cols, x.to(r_ptr.dtype.element_ty), mask=m)
        mean = tl.sum(x, axis=0) / D
        xc = tl.where(m, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / D
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=m, other=0.0).to(tl.float32)
        y = xc * rstd * w + b
        if QUANT:
            amax = tl.maximum(tl.max(tl.where(m, tl.abs(y), 0.0), axis=0), 1e-12)
            tl.store(s_ptr + row, tl.fdiv(amax, 448.0, ieee_rounding=True))
            y = to_e4m3(y * tl.fdiv(448.0, amax, ieee_rounding=True), EMULATE)
        tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def gelu_kernel(x_ptr, bias_ptr, y_ptr, C, x_stride, y_stride,
                    HAS_BIAS: tl.constexpr, GATED: tl.constexpr, BLOCK: tl.constexpr):
        """y[r, c] = gelu(x[r, c] + bias[c]) (* x[r, C + c] if GATED); grid (rows, cdiv(C, BLOCK))."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = cols < C
        x = tl.load(x_ptr + row * x_stride + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(bias_ptr + cols, mask=m, other=0.0).to(tl.float32)
        y = gelu_f32(x)
        if GATED:
            y *= tl.load(x_ptr + row * x_stride + C + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * y_stride + cols, y.to(y_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def act_block(x_ptr, bias_ptr, row, x_stride, cols, m, HAS_BIAS: tl.constexpr, GELU: tl.constexpr):
        """One block of a row as fp32: ``[bias +] x``, through ``gelu`` if asked."""
        v = tl.load(x_ptr + row * x_stride + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            v += tl.load(bias_ptr + cols, mask=m, other=0.0).to(tl.float32)
        if GELU:
            v = gelu_f32(v)
        return v

    @triton.jit
    def store_codes(y_ptr, row, C, cols, m, v, inv, EMULATE: tl.constexpr):
        tl.store(y_ptr + row * C + cols, to_e4m3(v * inv, EMULATE).to(y_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def quant_kernel(x_ptr, bias_ptr, y_ptr, s_ptr, C, x_stride,
                     HAS_BIAS: tl.constexpr, GELU: tl.constexpr, BLOCK: tl.constexpr, ONE_PASS: tl.constexpr,
                     EMULATE: tl.constexpr, BLOCK2: tl.constexpr = 0):
        """One row per program: [bias +] [gelu] -> per-row amax -> e4m3 codes and the row's scale.
        ONE_PASS (the row fits in registers): read and compute once, as a block of BLOCK columns plus,
        when BLOCK2 > 0, a second block of BLOCK2 from column BLOCK (two powers of two: a 10240-wide row
        is 8192 + 2048, not a 16384 block with 37.5% of its lanes masked but computed); otherwise two
        passes (the second re-reads the row from L2 and recomputes)."""
        row = tl.program_id(0).to(tl.int64)
        if ONE_PASS:
            cols = tl.arange(0, BLOCK)
            m = cols < C
            v = act_block(x_ptr, bias_ptr, row, x_stride, cols, m, HAS_BIAS, GELU)
            a = tl.max(tl.where(m, tl.abs(v), 0.0), axis=0)
            if BLOCK2 > 0:
                cols2 = BLOCK + tl.arange(0, BLOCK2)
                m2 = cols2 < C
                v2 = act_block(x_ptr, bias_ptr, row, x_stride, cols2, m2, HAS_BIAS, GELU)
                a = tl.maximum(tl.maximum(a, tl.max(tl.where(m2, tl.abs(v2), 0.0), axis=0)), 1e-12)
                tl.store(s_ptr + row, tl.fdiv(a, 448.0, ieee_rounding=True))
                inv = tl.fdiv(448.0, a, ieee_rounding=True)
                store_codes(y_ptr, row, C, cols, m, v, inv, EMULATE)
                store_codes(y_ptr, row, C, cols2, m2, v2, inv, EMULATE)
            else:
                a = tl.maximum(a, 1e-12)
                tl.store(s_ptr + row, tl.fdiv(a, 448.0, ieee_rounding=True))
                store_codes(y_ptr, row, C, cols, m, v, tl.fdiv(448.0, a, ieee_rounding=True), EMULATE)
        else:
            amax = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, C, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                m = cols < C
                v = act_block(x_ptr, bias_ptr, row, x_stride, cols, m, HAS_BIAS, GELU)
                amax = tl.maximum(amax, tl.where(m, tl.abs(v), 0.0))
            a = tl.maximum(tl.max(amax, axis=0), 1e-12)
            tl.store(s_ptr + row, tl.fdiv(a, 448.0, ieee_rounding=True))
            inv = tl.fdiv(448.0, a, ieee_rounding=True)
            for start in range(0, C, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                m = cols < C
                v = act_block(x_ptr, bias_ptr, row, x_stride, cols, m, HAS_BIAS, GELU)
                store_codes(y_ptr, row, C, cols, m, v, inv, EMULATE)


@functools.lru_cache(maxsize=None)
def _lib():
    if triton is None:
        return None
    return triton, add_ln_kernel, gelu_kernel, quant_kernel


def uses_triton(x: torch.Tensor) -> bool:
    """True when the fused Triton kernels run for tensors like ``x``."""
    return _ENABLED and (x.is_cuda or _INTERPRET) and _lib() is not None


def _warps(block: int) -> int:
    return 8 if block >= 2048 else 4


def _col_block(triton, c: int) -> int:
    """Columns per program for the elementwise GELU kernels: the largest of 2048/1024/512 that divides
    ``c`` (no half-masked last block: DNABERT-S's 3072 runs as 3 x 1024, not 2048 + a half-empty 2048)."""
    for b in (2048, 1024, 512):
        if c % b == 0:
            return b
    return min(triton.next_power_of_2(c), 2048)


ONE_PASS_MAX = 16384  # a row of up to this many values is quantised from registers in one pass


def split_blocks(c: int) -> tuple[int, int]:
    """A row of ``c`` columns as two power-of-two blocks ``(b1, b2)``: b1 the largest power of two <= c,
    b2 the smallest one covering the rest (0 when none is left): 10240 -> (8192, 2048), 2560 -> (2048, 512)."""
    b1 = 1 << (max(c, 1).bit_length() - 1)
    rest = c - b1
    return b1, (1 << (rest - 1).bit_length()) if rest > 0 else 0


def _quant_launch(qkern, triton, x, bias, y, s, *, gelu: bool) -> None:
    t, c = x.shape
    b1, b2 = split_blocks(c)
    one = b1 + b2 <= ONE_PASS_MAX
    block, block2 = (b1, b2) if one else (4096, 0)
    qkern[(t,)](x, bias if bias is not None else x, y, s, c, x.stride(0), HAS_BIAS=bias is not None, GELU=gelu,
                BLOCK=block, ONE_PASS=one, EMULATE=_INTERPRET, BLOCK2=block2, num_warps=_warps(block))


# --------------------------------------------------------------------------- reference math


def _quant_ref(y: torch.Tensor):
    """The per-row e4m3 quantisation in torch, bit-for-bit what the kernels emit."""
    y = y.float()
    amax = y.abs().amax(dim=-1).clamp(min=_AMAX_FLOOR)
    q = (y * (FP8_MAX / amax)[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, amax / FP8_MAX


def dequant_rows(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (q.float() * scale[:, None]).to(dtype)


# --------------------------------------------------------------------------- public ops


def add_layer_norm(x: torch.Tensor, delta: torch.Tensor | None, weight, bias, eps: float, *,
                   delta_bias: torch.Tensor | None = None, quant: bool = False, write_sum: bool = True):
    """``r = x + delta (+ delta_bias)``; ``y = LayerNorm(r)``. Returns ``(r, y)``.

    ``delta`` None: ``r`` is ``x`` itself. ``write_sum=False`` (post-LN models, whose residual is
    ``y``): ``r`` is not materialised and returned as None. ``quant``: ``y`` is ``(e4m3 [T, D],
    fp32 scale [T])``. ``x``/``delta``: contiguous ``[T, D]``.
    """
    if uses_triton(x):
        triton, kern, _, _ = _lib()
        t, d = x.shape
        x = x.contiguous()
        has_delta = delta is not None
        delta = delta.contiguous() if has_delta else None
        r = torch.empty_like(x) if has_delta and write_sum else x
        y = torch.empty(t, d, device=x.device, dtype=FP8_DTYPE if quant else x.dtype)
        s = torch.empty(t if quant else 1, device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(d)
        if t:
            kern[(t,)](x, delta if has_delta else x, delta_bias if delta_bias is not None else weight, weight, bias,
                       r, y, s, d, eps, HAS_DELTA=has_delta, HAS_DBIAS=delta_bias is not None,
                       WRITE_SUM=write_sum, QUANT=quant, BLOCK_D=block, EMULATE=_INTERPRET,
                       num_warps=_warps(block))
        return (r if write_sum else None), ((y, s) if quant else y)
    if delta is not None:
        if delta_bias is not None:
            delta = delta + delta_bias
        x = x + delta
    y = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    return (x if write_sum or delta is None else None), (_quant_ref(y) if quant else y)


def gelu(x: torch.Tensor, bias: torch.Tensor | None = None, *, quant: bool = False):
    """Exact (erf) GELU of ``x [T, C] (+ bias [C])``, in ``x``'s dtype, or ``(e4m3, scale)`` with ``quant``."""
    if uses_triton(x) and x.stride(-1) == 1:
        triton, _, gkern, qkern = _lib()
        t, c = x.shape
        if quant:
            y = torch.empty(t, c, device=x.device, dtype=FP8_DTYPE)
            s = torch.empty(t, device=x.device, dtype=torch.float32)
            if t:
                _quant_launch(qkern, triton, x, bias, y, s, gelu=True)
            return y, s
        y = torch.empty(t, c, device=x.device, dtype=x.dtype)
        block = _col_block(triton, c)
        if t:
            gkern[(t, triton.cdiv(c, block))](x, bias if bias is not None else x, y, c, x.stride(0), c,
                                              HAS_BIAS=bias is not None, GATED=False, BLOCK=block, num_warps=4)
        return y
    if bias is not None:
        x = x + bias
    if quant:
        return _quant_ref(F.gelu(x.float()))
    return F.gelu(x)


def gated_gelu(g: torch.Tensor) -> torch.Tensor:
    """``gelu(g[:, :I]) * g[:, I:]`` for ``g [T, 2I]`` (DNABERT-S's gated MLP), one pass."""
    i = g.shape[1] // 2
    if uses_triton(g) and g.stride(-1) == 1:
        triton, _, gkern, _ = _lib()
        t = g.shape[0]
        y = torch.empty(t, i, device=g.device, dtype=g.dtype)
        block = _col_block(triton, i)
        if t:
            gkern[(t, triton.cdiv(i, block))](g, g, y, i, g.stride(0), i, HAS_BIAS=False, GATED=True,
                                              BLOCK=block, num_warps=4)
        return y
    return F.gelu(g[:, :i]) * g[:, i:]


def quant_rows(x: torch.Tensor):
    """Per-row e4m3 codes and fp32 scales of ``x [T, C]``: ``(q [T, C], scale [T])``."""
    if uses_triton(x) and x.stride(-1) == 1:
        triton, _, _, qkern = _lib()
        t, c = x.shape
        y = torch.empty(t, c, device=x.device, dtype=FP8_DTYPE)
        s = torch.empty(t, device=x.device, dtype=torch.float32)
        if t:
            _quant_launch(qkern, triton, x, None, y, s, gelu=False)
        return y, s
    return _quant_ref(x)
