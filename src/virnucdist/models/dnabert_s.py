"""DNABERT-S (MosaicBERT / DNABERT-2 architecture) on packed sequences.

Read top to bottom: config -> modules -> packed forward and mean embedding ->
tokenizer -> loading, random init and saving in the Hugging Face layout.

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
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .attention import alibi_slopes, varlen_attention
from .fused import add_layer_norm, gated_gelu

__all__ = [
    "DnaBertSConfig",
    "PackedDnaBertS",
    "DnaBertSTokenizer",
    "DnaBertSCheckpointError",
    "PACKAGED_TOKENIZER",
    "load_dnabert_s",
    "random_dnabert_s",
    "save_hf_dir",
    "resolve_model_dir",
]

HF_REPO_ID = "zhihan1996/DNABERT-S"
PACKAGED_TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "dnabert_s_tokenizer.json"


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
    pos = torch.arange(T, device=hidden.device)
    seg = torch.searchsorted(ends, pos, right=True)  # segment index of each token
    sums = torch.zeros(B, hidden.shape[1], device=hidden.device, dtype=torch.float32)
    sums.index_add_(0, seg, hidden.to(torch.float32))
    lengths = (ends - cu_seqlens[:-1].to(torch.int64)).to(torch.float32)
    return sums / lengths.clamp(min=1)[:, None]


# --------------------------------------------------------------------------- tokenizer

# Mean bases per token measured on uniform random ACGT (500 sequences each):
#   150 bp: 4.62 (min 4.05), 300 bp: 4.66 (min 4.17), 500 bp: 4.68 (min 4.35),
#   1000 bp: 4.70, 2000 bp: 4.71.
# 4.0 bases/token (+2 specials) bounds every random sequence measured from 150 bp
# up; repetitive DNA gives fewer tokens (longer merges). Runs of N (or other
# non-ACGT letters) give one [UNK] per letter, so N-rich reads can exceed it.
BASES_PER_TOKEN = 4.0


class DnaBertSTokenizer:
    """The DNABERT-S BPE tokenizer (``SequenceTokenizer``): upper-cases input and
    returns ``[CLS] ... [SEP]`` ids as int64. Picklable: only the path travels;
    the ``tokenizers.Tokenizer`` is loaded lazily in each process."""

    cls_id = 1
    sep_id = 2
    pad_id = 3
    unk_id = 0

    def __init__(self, path: str | os.PathLike = PACKAGED_TOKENIZER):
        self.path = str(path)
        self._tok = None

    @property
    def tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(self.path)
            # the upstream tokenizer.json keeps training-time padding/truncation to 2000
            tok.no_padding()
            tok.no_truncation()
            self._tok = tok
        return self._tok

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._tok = None

    def __repr__(self):
        return f"DnaBertSTokenizer({self.path!r})"

    def encode(self, seq: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(seq.upper()).ids, dtype=np.int64)

    def encode_batch(self, seqs: list[str]) -> list[np.ndarray]:
        encs = self.tokenizer.encode_batch([s.upper() for s in seqs])
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def estimate_tokens(self, length: int) -> int:
        return math.ceil(length / BASES_PER_TOKEN) + 2


# --------------------------------------------------------------------------- loading

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class DnaBertSCheckpointError(ValueError):
    """The weights do not match the DNABERT-S architecture."""


def _how_to_get(what: str) -> str:
    return (f"{what}\nDownload DNABERT-S with:\n"
            f"  huggingface-cli download {HF_REPO_ID} --local-dir DIR\n"
            f"and pass DIR (or --random-init for a test run with random weights).")


def resolve_model_dir(model_dir: str | os.PathLike) -> Path:
    """A local directory, or a hub id (``zhihan1996/DNABERT-S``) found in the
    local Hugging Face cache (never downloads)."""
    p = Path(model_dir).expanduser()
    if p.is_dir():
        return p
    s = str(model_dir)
    looks_like_repo_id = s.count("/") == 1 and not s.startswith((".", "/", "~")) and not p.exists()
    if looks_like_repo_id:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(s, local_files_only=True))
        except Exception as e:  # not in the cache / no huggingface_hub
            raise FileNotFoundError(_how_to_get(
                f"DNABERT-S model {s!r}: no such directory, and the hub id is not in the "
                f"local Hugging Face cache ({type(e).__name__})."
            )) from None
    raise FileNotFoundError(_how_to_get(
        f"DNABERT-S model directory {str(p)!r} does not exist (expected config.json, "
        f"{' or '.join(WEIGHT_FILES)} and tokenizer.json)."))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        # weights_only: a pickle can run code; only tensors and containers are accepted
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise DnaBertSCheckpointError(
            f"{path}: refused to load (weights_only=True): it is not a plain tensor "
            f"checkpoint or contains arbitrary Python objects.\n  {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DnaBertSCheckpointError(f"{path}: not a state dict of tensors")
    return sd


def _check_state_dict(sd: dict[str, torch.Tensor], model: PackedDnaBertS, source) -> dict:
    if sd and all(k.startswith("bert.") for k in sd):  # saved from a wrapper
        sd = {k[len("bert."):]: v for k, v in sd.items()}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        hint = ""
        if any(k.startswith(("encoder.sentence_encoder.", "embed_tokens", "layers.",
                             "emb_layer_norm_after", "contact_head")) for k in sd):
            hint = " This looks like an ESM checkpoint, not DNABERT-S."
        elif any(k.startswith("cls.") for k in unexpected):
            hint = " This looks like a masked-LM (BertForMaskedLM) checkpoint."
        raise DnaBertSCheckpointError(
            f"{source}: the weights do not match DNABERT-S ({len(expected)} tensors).{hint}\n"
            f"  missing ({len(missing)}): {missing[:8]}{' ...' if len(missing) > 8 else ''}\n"
            f"  unexpected ({len(unexpected)}): {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}")
    bad = [f"{k}: {tuple(sd[k].shape)} != {s}" for k, s in expected.items() if tuple(sd[k].shape) != s]
    if bad:
        raise DnaBertSCheckpointError(
            f"{source}: tensor shapes do not match config.json:\n  " + "\n  ".join(bad[:8]))
    return sd


def _finish(model: PackedDnaBertS, device, dtype) -> PackedDnaBertS:
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_dnabert_s(model_dir: str | os.PathLike, *, device="cpu", dtype=torch.float32):
    """Loads a DNABERT-S Hugging Face directory (``config.json``, ``model.safetensors``
    or ``pytorch_model.bin``, ``tokenizer.json``) or a cached hub id.
    Returns ``(PackedDnaBertS in eval mode, DnaBertSTokenizer)``."""
    d = resolve_model_dir(model_dir)
    config_path = d / "config.json"
    weights = next((d / w for w in WEIGHT_FILES if (d / w).is_file()), None)
    tok_path = d / "tokenizer.json"
    missing = [str(p.name) for p, ok in ((config_path, config_path.is_file()),
                                         (Path(" or ".join(WEIGHT_FILES)), weights is not None),
                                         (tok_path, tok_path.is_file())) if not ok]
    if missing:
        raise FileNotFoundError(_how_to_get(
            f"DNABERT-S directory {str(d)!r} lacks: {', '.join(missing)}."))

    cfg = DnaBertSConfig.from_json(config_path)
    with torch.device("meta"):
        model = PackedDnaBertS(cfg)
    sd = _check_state_dict(_read_state_dict(weights), model, weights)
    model.load_state_dict(sd, strict=True, assign=True)
    return _finish(model, device, dtype), DnaBertSTokenizer(tok_path)


def random_dnabert_s(seed: int = 0, *, config: DnaBertSConfig | None = None,
                     device="cpu", dtype=torch.float32):
    """Random BERT-initialised weights (normal(0, initializer_range) for linear and
    embedding weights, zero biases, LayerNorm 1/0) with the packaged tokenizer."""
    cfg = config or DnaBertSConfig()
    with torch.device("meta"):
        model = PackedDnaBertS(cfg)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        if ".LayerNorm." in name or ".layernorm." in name:
            t = torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape)
        elif name.endswith("bias"):
            t = torch.zeros(p.shape)
        else:
            t = torch.empty(p.shape).normal_(0.0, cfg.initializer_range, generator=gen)
        sd[name] = t
    model.load_state_dict(sd, strict=True, assign=True)
    return _finish(model, device, dtype), DnaBertSTokenizer(PACKAGED_TOKENIZER)


_TOKENIZER_CONFIG = {
    "clean_up_tokenization_spaces": True,
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
    "model_max_length": 1000000000000000019884624838656,
    "pad_token": "[PAD]",
    "sep_token": "[SEP]",
    "tokenizer_class": "PreTrainedTokenizerFast",
    "unk_token": "[UNK]",
}
_SPECIAL_TOKENS_MAP = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]",
                       "sep_token": "[SEP]", "unk_token": "[UNK]"}


def save_hf_dir(model: PackedDnaBertS, out_dir: str | os.PathLike, fmt: str = "safetensors",
                tokenizer: DnaBertSTokenizer | None = None) -> Path:
    """Writes ``model`` as a DNABERT-S Hugging Face directory (fp32 weights as
    ``model.safetensors`` or ``pytorch_model.bin``, config.json, tokenizer files)."""
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', not {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "config.json", "w") as f:
        json.dump(model.config.to_hf_json(), f, indent=2)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, out / "pytorch_model.bin")
    shutil.copyfile(tokenizer.path if tokenizer else PACKAGED_TOKENIZER, out / "tokenizer.json")
    with open(out / "tokenizer_config.json", "w") as f:
        json.dump(_TOKENIZER_CONFIG, f, indent=2)
    with open(out / "special_tokens_map.json", "w") as f:
        json.dump(_SPECIAL_TOKENS_MAP, f, indent=2)
    return out
