"""Loading real checkpoints (or seeded random weights) into the packed models.

ESM-2: ``--model`` is a fair-esm name (looked up in the torch hub cache,
``<hub>/checkpoints/NAME.pt``, downloaded there from fair-esm's URL when a
network exists) or a path to a fair-esm ``.pt``. DNABERT-S: a Hugging Face
directory (``config.json`` + weights + tokenizer) or the hub id
``zhihan1996/DNABERT-S`` found in the local HF cache.

Checkpoints are read with ``torch.load(weights_only=True)``; fair-esm's
``argparse.Namespace`` config is the one extra class allowed.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import UserError
from .esm2 import ESM2_ARCHS, ESM2Config, EsmTokenizer, PackedESM2, rotary_inv_freq
from .tokenization import SequenceTokenizer

__all__ = ["LoadedModel", "load_model", "ModelLoadError", "save_fair_esm_checkpoint", "esm_hub_path"]

FAIR_ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
DNABERT_S_HUB_ID = "zhihan1996/DNABERT-S"


class ModelLoadError(UserError):
    """Missing or unusable weights; the message says where we looked and what to do."""


@dataclass
class LoadedModel:
    """A packed model with its tokenizer and what to record about it."""

    kind: str  # "esm2" | "dnabert_s"
    name: str
    module: nn.Module
    tokenizer: SequenceTokenizer
    embed_dim: int
    source: str
    attrs: dict = field(default_factory=dict)

    def embed(self, batch, repr_layer: int = -1) -> torch.Tensor:
        """Pooled fp32 ``[B, D]`` embeddings of a :class:`~virnucdist.packing.PackedBatch` on the model's device."""
        m = self.module
        if self.kind == "esm2":
            return m.embed(batch.tokens, batch.positions, batch.seg, batch.cu_seqlens, batch.max_seqlen, repr_layer)
        return m.embed(batch.tokens, batch.cu_seqlens, batch.max_seqlen)

    def embed_with_tokens(self, batch, repr_layer: int = -1):
        """``(pooled [B, D], per-token [M, D], tokens per sequence [B])``, fp32, one forward pass.

        Per-token states are the pooled ones: residues only for ESM-2 (BOS/EOS excluded, as
        fair-esm's extract.py writes them), every token for DNABERT-S.
        """
        from .dnabert_s import segment_mean
        from .esm2 import residue_mask, residue_mean

        m, cu = self.module, batch.cu_seqlens
        lengths = (cu[1:] - cu[:-1]).to(torch.int64)
        if self.kind == "esm2":
            hidden = m(batch.tokens, batch.positions, batch.seg, cu, batch.max_seqlen, repr_layer)
            keep = residue_mask(batch.positions, batch.seg, cu)
            return residue_mean(hidden, batch.positions, batch.seg, cu), hidden[keep].float(), lengths - 2
        hidden = m(batch.tokens, cu, batch.max_seqlen)
        return segment_mean(hidden, cu), hidden.float(), lengths


def esm_hub_path(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pt"


def is_dnabert_spec(spec: str) -> bool:
    p = Path(spec)
    return spec == DNABERT_S_HUB_ID or spec.lower() in {"dnabert-s", "dnabert_s"} or (p.is_dir() and (p / "config.json").exists())


def load_model(
    spec: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    random_init: bool = False,
    seed: int = 0,
    truncation_seq_length: int | None = 1022,
) -> LoadedModel:
    """Load ESM-2 (name or ``.pt``) or DNABERT-S (HF directory / hub id), ready for inference."""
    device = torch.device(device)
    if is_dnabert_spec(spec):
        from . import dnabert_s

        if random_init:
            module, tok = dnabert_s.random_dnabert_s(seed, device=device, dtype=dtype)
            source = f"random-init(seed={seed})"
        else:
            try:
                module, tok = dnabert_s.load_dnabert_s(spec, device=device, dtype=dtype)
            except FileNotFoundError:  # already says where it looked and how to download
                raise
            except (ValueError, KeyError, TypeError, OSError, SafetensorError) as e:
                # weights of another model, a corrupt weights file, a broken config.json
                raise ModelLoadError(f"DNABERT-S model {spec}: {e}" + (
                    "" if isinstance(e, dnabert_s.DnaBertSCheckpointError) else
                    f" ({type(e).__name__}); is this DNABERT-S's directory (config.json, model.safetensors, "
                    f"tokenizer.json)?")) from None
            source = str(spec)
        return LoadedModel("dnabert_s", "DNABERT-S", module.eval(), tok, module.config.hidden_size, source,
                           {"pooling": "mean over all tokens incl. [CLS]/[SEP]"})
    return _load_esm2(spec, device, dtype, random_init, seed, truncation_seq_length)


def _load_esm2(spec, device, dtype, random_init, seed, trunc) -> LoadedModel:
    tok = EsmTokenizer(trunc)
    name = Path(spec).stem if spec.endswith(".pt") else spec
    if random_init:
        if name not in ESM2_ARCHS:
            raise ModelLoadError(f"--random-init needs an ESM-2 architecture name, one of {', '.join(ESM2_ARCHS)}; got {spec!r}")
        module = random_esm2(ESM2Config.from_name(name), seed, device, dtype)
        source = f"random-init(seed={seed})"
    else:
        path = _find_esm_checkpoint(spec)
        cfg, state = read_fair_esm_checkpoint(path)
        with torch.device("meta"):
            module = PackedESM2(cfg)
        _load_strict(module, state, path)
        module.inv_freq = rotary_inv_freq(cfg)
        module = module.to(device=device, dtype=dtype)
        module.inv_freq = module.inv_freq.float()
        source = str(path)
    return LoadedModel("esm2", name, module.eval(), tok, module.cfg.embed_dim, source,
                       {"pooling": "mean over residues (BOS/EOS excluded)"})


def _find_esm_checkpoint(spec: str) -> Path:
    p = Path(spec).expanduser()
    if p.suffix == ".pt" or os.sep in spec:
        if not p.is_file():
            raise ModelLoadError(f"ESM-2 checkpoint {p} does not exist. Give a fair-esm .pt file or a model name "
                                 f"({', '.join(ESM2_ARCHS)}).")
        return p
    if spec not in ESM2_ARCHS:
        raise ModelLoadError(f"unknown model {spec!r}: give an ESM-2 name ({', '.join(ESM2_ARCHS)}), a fair-esm .pt "
                             f"path, or a DNABERT-S directory")
    path = esm_hub_path(spec)
    if path.is_file():
        return path
    url = FAIR_ESM_URL.format(name=spec)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
        return path
    except Exception as e:  # no network, proxy, disk
        raise ModelLoadError(
            f"ESM-2 weights {spec} not found at {path} and downloading {url} failed ({type(e).__name__}). "
            f"Download that file on a machine with network access into {path.parent} (or set TORCH_HOME), "
            f"pass the .pt path with --model, or use --random-init for a test run.") from None


def read_fair_esm_checkpoint(path: Path) -> tuple[ESM2Config, dict]:
    """Config and encoder state dict of a fair-esm ESM-2 ``.pt`` (prefixes stripped), loaded safely."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ModelLoadError(f"{path}: not a loadable fair-esm checkpoint ({str(e).splitlines()[0][:200]}). "
                             f"Only plain tensors and fair-esm's config are accepted.") from None
    try:
        m = data["cfg"]["model"]
        cfg = ESM2Config(int(m.encoder_layers), int(m.encoder_embed_dim), int(m.encoder_attention_heads),
                         bool(getattr(m, "token_dropout", True)))
        raw = data["model"]
    except (KeyError, TypeError, AttributeError):
        raise ModelLoadError(f"{path}: not a fair-esm ESM-2 checkpoint (expected 'model' and 'cfg'['model'] "
                             f"with encoder_layers/encoder_embed_dim/encoder_attention_heads)") from None
    state = {}
    for k, v in raw.items():
        for prefix in ("encoder.sentence_encoder.", "encoder."):
            if k.startswith(prefix):
                k = k[len(prefix):]
                break
        state[k] = v
    return cfg, state


def _load_strict(module: PackedESM2, state: dict, path) -> None:
    state = {k: v for k, v in state.items() if not k.startswith(PackedESM2.UNUSED_PREFIXES)}
    fits = f"{path}: weights do not fit ESM-2 ({module.cfg.num_layers} layers, dim {module.cfg.embed_dim})"
    try:
        result = module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # size mismatches raise even with strict=False
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ModelLoadError(f"{fits}: {detail[:300]}. Is this the right model file?") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(f"{fits}; missing {result.missing_keys[:4]}, unexpected "
                             f"{result.unexpected_keys[:4]}. Is this the right model file?")


def random_esm2(cfg: ESM2Config, seed: int, device, dtype) -> PackedESM2:
    """Seeded random weights, built directly on ``device`` (no 11 GB fp32 CPU copy for the 3B)."""
    with torch.device("meta"):
        module = PackedESM2(cfg)
    module = module.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        module.inv_freq = rotary_inv_freq(cfg, device)
    module = module.to(dtype)
    module.inv_freq = module.inv_freq.float()
    return module


def save_fair_esm_checkpoint(model: PackedESM2 | nn.Module, path: str | Path, cfg: ESM2Config | None = None) -> Path:
    """Write weights in fair-esm's on-disk format (``encoder.sentence_encoder.`` prefix, Namespace cfg).

    Accepts a :class:`PackedESM2` (q/k/v split back out) or a fair-esm ``ESM2``.
    """
    if isinstance(model, PackedESM2):
        cfg = model.cfg
        state = {}
        for k, v in model.state_dict().items():
            if ".self_attn.qkv." in k:
                q, kk, vv = v.chunk(3)
                for p, t in zip("qkv", (q, kk, vv)):
                    state[k.replace(".qkv.", f".{p}_proj.")] = t.clone()
            else:
                state[k] = v
    else:
        state = dict(model.state_dict())
        cfg = cfg or ESM2Config(model.num_layers, model.embed_dim, model.attention_heads, model.token_dropout)
    ns = argparse.Namespace(encoder_layers=cfg.num_layers, encoder_embed_dim=cfg.embed_dim,
                            encoder_attention_heads=cfg.attention_heads, token_dropout=cfg.token_dropout)
    payload = {"model": {f"encoder.sentence_encoder.{k}": v.detach().float().cpu() for k, v in state.items()},
               "cfg": {"model": ns}, "args": None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path
