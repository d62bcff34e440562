"""ESM-2 on packed sequences (no padding), numerically the fair-esm model.

State-dict names are fair-esm's (after its "encoder." prefix strip), so a real
checkpoint loads with a plain ``load_state_dict``; a load hook fuses q/k/v into
one projection (one GEMM instead of three) and drops the rotary buffer, which
is recomputed from the packed positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import varlen_attention
from .determinism import is_reproducible, segment_sums
from .fused import add_layer_norm, gelu
from .rotary import rotary_qk, rotary_tables, uses_triton
from .tokenization import CLS, EOS, MASK, PAD, VOCAB, EsmTokenizer  # noqa: F401 (CLS, EOS, EsmTokenizer: re-exported)

__all__ = ["ESM2Config", "PackedESM2", "ESM2_ARCHS"]

#: fair-esm's published ESM-2 sizes: name -> (layers, dim, heads)
ESM2_ARCHS: dict[str, tuple[int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}


@dataclass(frozen=True)
class ESM2Config:
    num_layers: int
    embed_dim: int
    attention_heads: int
    token_dropout: bool = True

    @classmethod
    def from_name(cls, name: str) -> "ESM2Config":
        layers, dim, heads = ESM2_ARCHS[name]
        return cls(layers, dim, heads)


def rotary_inv_freq(cfg: ESM2Config, device=None) -> torch.Tensor:
    head_dim = cfg.embed_dim // cfg.attention_heads
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self._register_load_state_dict_pre_hook(self._fuse_qkv)

    @staticmethod
    def _fuse_qkv(state_dict, prefix, *args):
        names = [f"{prefix}{p}_proj" for p in "qkv"]
        if f"{names[0]}.weight" in state_dict:
            for kind in ("weight", "bias"):
                state_dict[f"{prefix}qkv.{kind}"] = torch.cat([state_dict.pop(f"{n}.{kind}") for n in names])
        state_dict.pop(f"{prefix}rot_emb.inv_freq", None)

    def forward(self, h, rope, cu_seqlens, max_seqlen):
        """``h``: the normalised input ``[T, D]``, or ``(e4m3 [T, D], scale [T])`` when qkv is an FP8 linear."""
        qkv = self.qkv(h)
        t = qkv.shape[0]
        q, k, v = rotary_qk(qkv.view(t, 3, self.heads, self.head_dim), *rope)
        out = varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale=self.head_dim**-0.5)
        return self.out_proj(out.reshape(t, -1))  # an FP8 out_proj quantises ``out`` per token itself


def _fp8(linear) -> bool:
    return getattr(linear, "takes_fp8", False)


class TransformerLayer(nn.Module):
    """Pre-LN: ``x = x + attn(LN1(x)); x = x + fc2(gelu(fc1(LN2(x))))``.

    :meth:`step` leaves the last residual add pending, so that the next LayerNorm adds it in the
    same kernel (:func:`.fused.add_layer_norm`). When the linears are FP8 (:mod:`.fp8`), the
    LayerNorm and GELU kernels emit e4m3 activations with per-token scales.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def step(self, x, delta, rope, cu_seqlens, max_seqlen):
        """``(x, delta) -> (x', delta')`` with ``x + delta`` the residual stream before this layer
        (``delta`` may be None) and ``x' + delta'`` the one after it."""
        ln1, ln2 = self.self_attn_layer_norm, self.final_layer_norm
        # each producing kernel emits e4m3 when the GEMM it feeds is FP8 (an FP8 policy may keep some bf16)
        x, h = add_layer_norm(x, delta, ln1.weight, ln1.bias, ln1.eps, quant=_fp8(self.self_attn.qkv))
        a = self.self_attn(h, rope, cu_seqlens, max_seqlen)
        x, h = add_layer_norm(x, a, ln2.weight, ln2.bias, ln2.eps, quant=_fp8(self.fc1))
        return x, self.fc2(gelu(self.fc1(h), quant=_fp8(self.fc2)))

    def forward(self, x, rope, cu_seqlens, max_seqlen):
        x, delta = self.step(x, None, rope, cu_seqlens, max_seqlen)
        return x + delta


class PackedESM2(nn.Module):
    """ESM-2 encoder over packed tokens ``[T]`` with ``cu_seqlens``."""

    # checkpoint keys that embeddings never use
    UNUSED_PREFIXES = ("lm_head.", "contact_head.")

    def __init__(self, cfg: ESM2Config):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(VOCAB, cfg.embed_dim, padding_idx=PAD)
        self.layers = nn.ModuleList(TransformerLayer(cfg.embed_dim, cfg.attention_heads) for _ in range(cfg.num_layers))
        self.emb_layer_norm_after = nn.LayerNorm(cfg.embed_dim)
        self.register_buffer("inv_freq", rotary_inv_freq(cfg), persistent=False)

    def resolve_layer(self, repr_layer: int) -> int:
        n = self.cfg.num_layers
        layer = repr_layer if repr_layer >= 0 else n + 1 + repr_layer
        if not 0 <= layer <= n:
            raise ValueError(f"--repr-layer {repr_layer} is outside this model's layers 0..{n} (or -1..-{n + 1})")
        return layer

    def forward(self, tokens, positions, seg, cu_seqlens, max_seqlen: int, repr_layer: int = -1,
                keep: dict | None = None) -> torch.Tensor:
        """Hidden states ``[T, D]`` of ``repr_layer`` (the last layer includes the final LayerNorm).

        ``keep``: a dict whose keys are lower layers (0..repr_layer-1) to fill with their hidden states
        in the same pass (several ``--repr-layers`` at once)."""
        layer = self.resolve_layer(repr_layer)
        x = self.embed_tokens(tokens)
        if self.cfg.token_dropout:
            # fair-esm rescales at inference too: x * (1 - 0.15*0.8) / (1 - observed mask ratio)
            is_mask = tokens == MASK
            x = x.masked_fill(is_mask[:, None], 0.0)
            lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.float32)
            masked = torch.zeros_like(lengths).index_add_(0, seg, is_mask.to(torch.float32))
            x = x * ((1 - 0.15 * 0.8) / (1 - masked / lengths)).to(x.dtype)[seg, None]
        if keep is not None and 0 in keep:
            keep[0] = x
        if layer == 0:
            return x
        tables = None if uses_triton(x.device) else rotary_tables(positions, self.inv_freq, x.dtype)
        rope = (positions, self.inv_freq, tables)
        delta = None
        for i in range(layer):
            x, delta = self.layers[i].step(x, delta, rope, cu_seqlens, max_seqlen)
            if keep is not None and i + 1 in keep and i + 1 < layer:
                keep[i + 1] = x + delta
        if layer == self.cfg.num_layers:
            ln = self.emb_layer_norm_after
            return add_layer_norm(x, delta, ln.weight, ln.bias, ln.eps, write_sum=False)[1]
        return x + delta

    def embed(self, tokens, positions, seg, cu_seqlens, max_seqlen: int, repr_layer: int = -1) -> torch.Tensor:
        """Per-sequence mean over residues (BOS/EOS excluded), fp32 ``[B, D]``."""
        hidden = self.forward(tokens, positions, seg, cu_seqlens, max_seqlen, repr_layer)
        return residue_mean(hidden, positions, seg, cu_seqlens)


def residue_mask(positions, seg, cu_seqlens) -> torch.Tensor:
    """True for residues, False for each sequence's BOS and EOS."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    return (positions > 0) & (positions < (lengths[seg] - 1))


def residue_mean(hidden: torch.Tensor, positions, seg, cu_seqlens) -> torch.Tensor:
    """Segment mean over tokens 1..len-2 of each sequence, summed in fp32, no host sync."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if is_reproducible():  # each sequence's residues summed on their own, in order (no atomics)
        sums = segment_sums(hidden, cu_seqlens, skip_ends=True)
        return sums / (lengths - 2).clamp(min=1)[:, None].to(torch.float32)
    keep = residue_mask(positions, seg, cu_seqlens)
    sums = torch.zeros(lengths.numel(), hidden.shape[1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, seg, hidden.float() * keep[:, None])
    return sums / (lengths - 2).clamp(min=1)[:, None].to(torch.float32)
