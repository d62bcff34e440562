"""DNABERT-S (MosaicBERT / DNABERT-2 architecture) on packed sequences.

Read top to bottom: config -> modules -> packed forward and mean embedding.
The tokenizer is in :mod:`.tokenization`, loading a Hugging Face directory in
:mod:`.dnabert_s_loading`, random weights in :mod:`.random_init`.

The forward follows DNABERT-2's ``bert_layers.py`` (``BertModel``) exactly,
without padding:

* embeddings: ``LayerNorm(word_embeddings[ids] + token_type_embeddings[0])``,
  no position embeddings;
* per layer (post-LayerNorm): ``Wqkv`` -> ``view(T, 3, heads, head_dim)``,
  attention with ``softmax(q k^T / sqrt(head_dim) - slope_h * |i - j|)``
  (ALiBi, positions counted within each sequence),
  ``x = LayerNorm(dense(attn) + x)``; gated-linear-unit MLP
  ``g = gated_layers(x)``, ``h = gelu(g[:, :I]) * g[:, I:]``,
  ``x = LayerNorm(wo(h) + x)``;
* the output is the last hidden state; the pooler is kept only so that the
  checkpoint loads strictly (VirNucPro does not use it).

Sequences are packed: ``tokens [T]`` holds all sequences back to back and
``cu_seqlens [B+1]`` (int32) their boundaries. Attention goes through
:func:`virnucdist.models.attention.varlen_attention`, the single kernel
dispatch point.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from .attention import alibi_slopes, varlen_attention
from .determinism import is_reproducible, segment_sums
from .fused import add_layer_norm, gated_gelu

__all__ = ["DnaBertSConfig", "PackedDnaBertS", "segment_mean"]


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DnaBertSConfig:
    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    # Only used when building random weights (BERT init: normal(0, initializer_range)).
    initializer_range: float = 0.02
    # Kept for round-tripping config.json; the packed model has no length cap
    # (the original rebuilds its ALiBi table for longer inputs).
    alibi_starting_size: int = 512
    max_position_embeddings: int = 512
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")

    @classmethod
    def from_dict(cls, d: dict) -> DnaBertSConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> DnaBertSConfig:
        """Reads a Hugging Face ``config.json`` of DNABERT-2 / DNABERT-S; unknown
        fields (dropouts, ``hidden_act``, ``auto_map`` ...) are ignored: the MLP
        uses exact GELU whatever ``hidden_act`` says, as in ``bert_layers.py``."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_hf_json(self) -> dict:
        """A ``config.json`` dict in the layout of the DNABERT-S Hugging Face repo."""
        d = dataclasses.asdict(self)
        d.update({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "attention_probs_dropout_prob": 0.0,
            "hidden_dropout_prob": 0.1,
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
            "torch_dtype": "float32",
        })
        return dict(sorted(d.items()))


# --------------------------------------------------------------------------- modules
# Attribute names mirror the checkpoint's state-dict names exactly, so loading
# is a strict ``load_state_dict`` with no renaming.


class Embeddings(nn.Module):
    def __init__(self, cfg: DnaBertSConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # token_type_ids are all 0 in a single-segment input
        x = self.word_embeddings(tokens) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):  # "attention.self"
    def __init__(self, cfg: DnaBertSConfig):
        super().__init__()
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)


class SelfOutput(nn.Module):  # "attention.output"
    def __init__(self, cfg: DnaBertSConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class Attention(nn.Module):
    def __init__(self, cfg: DnaBertSConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.self = SelfAttention(cfg)
        self.output = SelfOutput(cfg)

    def forward(self, x, cu_seqlens, max_seqlen, slopes):
        T = x.shape[0]
        # columns of Wqkv are (q | k | v), each head-major: 'T (three h d)'
        qkv = self.self.Wqkv(x).view(T, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        a = varlen_attention(q, k, v, cu_seqlens, max_seqlen,
                             scale=1.0 / math.sqrt(self.head_dim), alibi=slopes)
        a = a.reshape(T, self.n_heads * self.head_dim)
        ln = self.output.LayerNorm  # LayerNorm(dense(a) + x): one fused kernel on CUDA
        return add_layer_norm(x, self.output.dense(a), ln.weight, ln.bias, ln.eps, write_sum=False)[1]


class GatedMLP(nn.Module):  # "mlp"
    def __init__(self, cfg: DnaBertSConfig):
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gated_layers = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x):
        h = gated_gelu(self.gated_layers(x))  # gelu(g[:, :I]) * g[:, I:], exact GELU, one pass
        ln = self.layernorm
        return add_layer_norm(x, self.wo(h), ln.weight, ln.bias, ln.eps, write_sum=False)[1]


class Layer(nn.Module):
    def __init__(self, cfg: DnaBertSConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.mlp = GatedMLP(cfg)

    def forward(self, x, cu_seqlens, max_seqlen, slopes):
        return self.mlp(self.attention(x, cu_seqlens, max_seqlen, slopes))


class Encoder(nn.Module):
    def __init__(self, cfg: DnaBertSConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class Pooler(nn.Module):  # unused; present in the checkpoint
    def __init__(self, cfg: DnaBertSConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class PackedDnaBertS(nn.Module):
    """DNABERT-S encoder on packed sequences.

    ``forward(tokens [T] int64, cu_seqlens [B+1] int32, max_seqlen) -> [T, hidden]``
    in the model's dtype; ``embed(...) -> [B, hidden]`` fp32 mean over all
    tokens of each sequence ([CLS] and [SEP] included).
    """

    def __init__(self, config: DnaBertSConfig | None = None):
        super().__init__()
        self.config = config = config or DnaBertSConfig()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)
        # ALiBi slopes stay fp32 whatever the model dtype (2^-0.5 etc. are not
        # exact in bf16), so they are cached per device rather than registered
        # as a buffer that .to(dtype) would round (or meta-device init would void).
        self._slopes: dict[torch.device, torch.Tensor] = {}

    def alibi_slopes(self, device: torch.device) -> torch.Tensor:
        s = self._slopes.get(device)
        if s is None:
            s = self._slopes[device] = alibi_slopes(self.config.num_attention_heads).to(device)
        return s

    def forward(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        x = self.embeddings(tokens)
        slopes = self.alibi_slopes(x.device)
        for layer in self.encoder.layer:
            x = layer(x, cu_seqlens, max_seqlen, slopes)
        return x

    def embed(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        hidden = self(tokens, cu_seqlens, max_seqlen)
        return segment_mean(hidden, cu_seqlens)


def segment_mean(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """fp32 mean of ``hidden [T, D]`` over each packed segment -> ``[B, D]``.

    Vectorised and free of host syncs: a token's segment comes from a
    ``searchsorted`` on the boundaries, sums from one ``index_add_``."""
    T = hidden.shape[0]
    B = cu_seqlens.numel() - 1
    ends = cu_seqlens[1:].to(torch.int64)
    if is_reproducible():  # each sequence summed on its own, in order (no atomics)
        lengths = (ends - cu_seqlens[:-1].to(torch.int64)).to(torch.float32)
        return segment_sums(hidden, cu_seqlens) / lengths.clamp(min=1)[:, None]
    pos = torch.arange(T, device=hidden.device)
    seg = torch.searchsorted(ends, pos, right=True)  # segment index of each token
    sums = torch.zeros(B, hidden.shape[1], device=hidden.device, dtype=torch.float32)
    sums.index_add_(0, seg, hidden.to(torch.float32))
    lengths = (ends - cu_seqlens[:-1].to(torch.int64)).to(torch.float32)
    return sums / lengths.clamp(min=1)[:, None]
