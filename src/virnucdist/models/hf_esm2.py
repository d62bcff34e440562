"""ESM-2 from a Hugging Face directory (``EsmModel`` / ``EsmForMaskedLM.save_pretrained``) into :class:`PackedESM2`.

The directory holds ``config.json`` (``model_type: "esm"``, or ``"fast_esm"`` for FastESM2
re-packagings of the same weights, read as the ESM-2 they hold, token dropout's rescaling included) and the weights as
``model.safetensors``, sharded ``model-0000i-of-0000n.safetensors`` with
``model.safetensors.index.json``, or ``pytorch_model.bin`` (sharded likewise). One
adapter, :class:`HfEsm2Names`, maps Hugging Face's tensor names onto the fair-esm names
the packed model uses; HF's separate ``query``/``key``/``value`` become fair-esm's
``q_proj``/``k_proj``/``v_proj``, which the model's load hook fuses into one projection as
for a fair-esm ``.pt``. Rotary frequencies, the pooler, the contact and LM heads are dropped.

HF's ESM-2 is fair-esm's network: token dropout rescaling, rotary embeddings (relative, so
HF's position offset changes nothing), pre-LN layers and ``emb_layer_norm_after`` on the
last layer; its ``EsmTokenizer`` adds ``<cls>``/``<eos>`` with fair-esm's vocabulary, which
is checked against ``vocab.txt`` when the directory has one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import CheckpointError, ModelNotFoundError
from .esm2 import ESM2Config
from .hf_cache import read_weights_file
from .tokenization import ESM_TOKENS, MASK, PAD

__all__ = ["HfEsm2Names", "read_hf_esm2", "hf_weight_files"]

_SINGLE = ("model.safetensors", "pytorch_model.bin")
_INDEX = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class HfEsm2Names:
    """Hugging Face ESM-2 config and tensor names -> :class:`ESM2Config` and fair-esm names."""

    LAYER_PARTS = {
        "attention.self.query": "self_attn.q_proj",
        "attention.self.key": "self_attn.k_proj",
        "attention.self.value": "self_attn.v_proj",
        "attention.output.dense": "self_attn.out_proj",
        "attention.LayerNorm": "self_attn_layer_norm",
        "intermediate.dense": "fc1",
        "output.dense": "fc2",
        "LayerNorm": "final_layer_norm",
    }
    DROPPED = ("pooler.", "contact_head.", "lm_head.", "rotary_embeddings.", "embeddings.position_ids")

    @staticmethod
    def config(cfg: dict, where: Path) -> ESM2Config:
        """The packed model's config; one line for an HF config this model cannot run as is."""
        try:
            # FastESM2's configs spell two of them num_hiddenum_layers / num_attentionum_heads
            layers = int(cfg.get("num_hidden_layers", cfg.get("num_hiddenum_layers")))
            heads = int(cfg.get("num_attention_heads", cfg.get("num_attentionum_heads")))
            dim = int(cfg["hidden_size"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: an ESM config.json needs num_hidden_layers, hidden_size and "
                                  f"num_attention_heads") from None
        rope = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        checks = [
            ("position_embedding_type", cfg.get("position_embedding_type", "rotary"), "rotary"),
            ("emb_layer_norm_before", bool(cfg.get("emb_layer_norm_before", False)), False),
            ("intermediate_size", int(cfg.get("intermediate_size", 4 * dim)), 4 * dim),
            ("vocab_size", int(cfg.get("vocab_size", len(ESM_TOKENS))), len(ESM_TOKENS)),
            ("pad_token_id", cfg.get("pad_token_id", PAD), PAD),
            ("mask_token_id", cfg.get("mask_token_id", MASK), MASK),
            ("hidden_act", cfg.get("hidden_act", "gelu"), "gelu"),
            ("layer_norm_eps", float(cfg.get("layer_norm_eps", 1e-5)), 1e-5),
            ("rope_theta", float(rope), 10000.0),
            ("is_folding_model", bool(cfg.get("is_folding_model", False)), False),
        ]
        bad = [f"{k} = {v!r} (ESM-2 has {want!r})" for k, v, want in checks if v != want]
        if bad or dim % heads:
            bad += [f"hidden_size {dim} is not a multiple of num_attention_heads {heads}"] if dim % heads else []
            raise CheckpointError(f"{where}: not an ESM-2 this model runs: {'; '.join(bad)}")
        return ESM2Config(layers, dim, heads, bool(cfg.get("token_dropout", True)))

    @classmethod
    def name(cls, key: str) -> str | None:
        """The fair-esm name of an HF tensor name (None: not used for embeddings)."""
        if key.startswith("esm."):  # EsmForMaskedLM and the other heads keep the encoder under "esm."
            key = key[len("esm."):]
        if key.startswith(cls.DROPPED) or ".rotary_embeddings." in key:
            return None
        if key == "embeddings.word_embeddings.weight":
            return "embed_tokens.weight"
        if key.startswith("encoder.emb_layer_norm_after."):
            return key[len("encoder."):]
        if key.startswith("encoder.layer."):
            _, _, i, rest = key.split(".", 3)
            part, _, kind = rest.rpartition(".")
            if part in cls.LAYER_PARTS:
                return f"layers.{i}.{cls.LAYER_PARTS[part]}.{kind}"
        return key  # left as is: the strict load names it if it does not belong

    @classmethod
    def state_dict(cls, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in sd.items():
            if k.endswith((".gamma", ".beta")):  # LayerNorm parameters under their legacy names
                k = k.rsplit(".", 1)[0] + (".weight" if k.endswith(".gamma") else ".bias")
            n = cls.name(k)
            if n is not None:
                out[n] = v
        return out


def hf_weight_files(d: Path) -> list[Path]:
    """The weight files of an HF directory: one file, or every shard its index names."""
    for name in _INDEX:
        index = d / name
        if index.is_file():
            try:
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise CheckpointError(f"{index}: not a readable shard index (a 'weight_map' of tensor -> file); "
                                      f"download it again") from None
            missing = [f for f in files if not (d / f).is_file()]
            if missing:
                raise ModelNotFoundError(f"{d}: the shard index names {len(missing)} missing file(s), e.g. "
                                         f"{missing[0]}; the download is incomplete")
            return [d / f for f in files]
    for name in _SINGLE:
        if (d / name).is_file():
            return [d / name]
    raise ModelNotFoundError(f"{d}: an ESM-2 Hugging Face directory without weights: expected model.safetensors "
                             f"(or its shards with model.safetensors.index.json) or pytorch_model.bin")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    return read_weights_file(path)


def _check_vocab(d: Path) -> None:
    vocab = d / "vocab.txt"
    if vocab.is_file():
        toks = [t.strip() for t in vocab.read_text().splitlines() if t.strip()]
        if toks != ESM_TOKENS:
            raise CheckpointError(f"{vocab}: not ESM-2's vocabulary ({len(toks)} tokens, first "
                                  f"{toks[:5]}); ESM-2 has fair-esm's 33 tokens")


def read_hf_esm2(d: Path) -> tuple[ESM2Config, dict[str, torch.Tensor], Path]:
    """Config, fair-esm-named state dict and the first weight file of an HF ESM-2 directory."""
    cfg_path = d / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: not a readable config.json ({type(e).__name__})") from None
    cfg = HfEsm2Names.config(raw, cfg_path)
    _check_vocab(d)
    files = hf_weight_files(d)
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(_read_file(f))
    return cfg, HfEsm2Names.state_dict(sd), files[0]
