"""``load_model(spec)``: a model spec in, an :class:`EmbeddingModel` adapter out.

ESM-2: ``spec`` is a fair-esm name (looked up in the torch hub cache,
``<hub>/checkpoints/NAME.pt``, downloaded there from fair-esm's URL when a
network exists) or a path to a fair-esm ``.pt``, read here. DNABERT-S: a Hugging
Face directory or the hub id ``zhihan1996/DNABERT-S`` in the local HF cache, read
by :mod:`.dnabert_s_loading`. A Hugging Face directory (or a hub id in the local HF
cache) is ESM-2 or DNABERT-S as its ``config.json`` ``model_type`` says
(:mod:`.hf_cache`); an HF ESM-2 is read by :mod:`.hf_esm2` into the same packed model.

Checkpoints are read with ``torch.load(weights_only=True)`` (memory-mapped);
fair-esm's ``argparse.Namespace`` config is the one extra class allowed. Models
are built on the meta device and the checkpoint's tensors assigned to them.

``random_init`` (seeded random weights; the architectures of the names above, and
``dnabert-s-tiny``, a small DNABERT-S for CPU demos) takes the weights from
:mod:`.random_init`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from .adapters import DnaBertSEmbedder, EmbeddingModel, ESM2Embedder
from .dnabert_s_loading import HF_REPO_ID, load_dnabert_s
from .random_init import DNABERT_S_TINY, random_dnabert_s, random_esm2
from .errors import CheckpointError, ModelLoadError, ModelNotFoundError, torch_error_line
from .esm2 import ESM2_ARCHS, ESM2Config, PackedESM2, rotary_inv_freq
from .hf_cache import hf_family, hub_cache_dir, local_model_dir, looks_like_hub_id
from .hf_esm2 import read_hf_esm2
from .tokenization import EsmTokenizer

__all__ = ["EmbeddingModel", "load_model", "ModelLoadError", "esm_hub_path",
           "read_fair_esm_checkpoint", "DNABERT_S_NAMES", "DNABERT_S_TINY_NAME", "model_family"]

FAIR_ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
DNABERT_S_HUB_ID = HF_REPO_ID
DNABERT_S_TINY_NAME = "dnabert-s-tiny"  # random weights only (a CPU demo)
DNABERT_S_NAMES = {"dnabert-s", "dnabert_s", DNABERT_S_TINY_NAME}


def esm_hub_path(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pt"


def model_family(spec: str) -> str:
    """``"dnabert_s"`` or ``"esm2"``: DNABERT-S names, else a model directory's ``config.json``, else ESM-2."""
    spec = str(spec)
    if spec == DNABERT_S_HUB_ID or spec.lower() in DNABERT_S_NAMES:
        return "dnabert_s"
    d = local_model_dir(spec)
    return hf_family(d) if d is not None else "esm2"


def is_dnabert_spec(spec: str) -> bool:
    return model_family(spec) == "dnabert_s"


def _random_attrs(seed: int, what: str) -> tuple[str, dict]:
    source = f"random-init(seed={seed})"
    return source, {"random_weights": True,
                    "warning": f"RANDOM WEIGHTS ({what}, seed {seed}): for tests and demos; the vectors mean nothing"}


def load_model(
    spec: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    random_init: bool = False,
    seed: int = 0,
    truncation_seq_length: int | None = 1022,
    strip_stop: bool = True,
) -> EmbeddingModel:
    """Load ESM-2 (name, ``.pt``, HF directory / hub id) or DNABERT-S (HF directory / hub id), ready for inference.

    ``truncation_seq_length`` and ``strip_stop`` (drop one terminal ``*``) are ESM-2's
    tokenizer options. Raises a :class:`ModelLoadError` (a ``UserError``) with one line.
    """
    device = torch.device(device)
    spec = str(spec)
    if is_dnabert_spec(spec):
        return _load_dnabert_s(spec, device, dtype, random_init, seed)
    return _load_esm2(spec, device, dtype, random_init, seed, EsmTokenizer(truncation_seq_length, strip_stop))


def _load_dnabert_s(spec, device, dtype, random_init, seed) -> DnaBertSEmbedder:
    tiny = spec.lower() == DNABERT_S_TINY_NAME
    if random_init:
        config = DNABERT_S_TINY if tiny else None
        module, tok = random_dnabert_s(seed, config=config, device=device, dtype=dtype)
        name = "DNABERT-S-tiny" if tiny else "DNABERT-S"
        source, attrs = _random_attrs(seed, f"{name}, {module.config.num_hidden_layers} layers, "
                                            f"dim {module.config.hidden_size}")
        return DnaBertSEmbedder(name, module, tok, source, attrs)
    if tiny:
        raise ModelLoadError(f"{spec} is a small random-weight DNABERT-S for demos: add --random-init, or give "
                             f"a DNABERT-S directory for real weights")
    module, tok = load_dnabert_s(spec, device=device, dtype=dtype)
    return DnaBertSEmbedder("DNABERT-S", module, tok, str(spec))


def _load_esm2(spec, device, dtype, random_init, seed, tok) -> ESM2Embedder:
    name = Path(spec).stem if spec.endswith(".pt") else spec.rsplit("/", 1)[-1] if looks_like_hub_id(spec) else spec
    if random_init:
        if name not in ESM2_ARCHS:
            raise ModelLoadError(f"--random-init needs an ESM-2 architecture name, one of {', '.join(ESM2_ARCHS)}; "
                                 f"got {spec!r}")
        module = random_esm2(ESM2Config.from_name(name), seed, device, dtype)
        source, attrs = _random_attrs(seed, name)
        return ESM2Embedder(name, module.eval(), tok, source, attrs)
    hf_dir = local_model_dir(spec)
    if hf_dir is not None:  # a Hugging Face directory or cached hub id (model_type "esm")
        cfg, state, path = read_hf_esm2(hf_dir)
        name = name if looks_like_hub_id(spec) else hf_dir.resolve().name
    else:
        path = _find_esm_checkpoint(spec)
        cfg, state = read_fair_esm_checkpoint(path)
    # tensor by tensor from the mapped file to the run's device and dtype: no model-sized host copy
    state = to_run_all({k: v for k, v in state.items() if not k.startswith(PackedESM2.UNUSED_PREFIXES)}, device, dtype)
    with torch.device("meta"):
        module = PackedESM2(cfg)
    _load_strict(module, state, path)  # assigns these tensors (q/k/v fused on the device, in the run's dtype)
    del state
    module.inv_freq = rotary_inv_freq(cfg, device)
    return ESM2Embedder(name, module.eval().requires_grad_(False), tok, str(path))


def to_run_all(state: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """:func:`to_run` over a state dict; to a GPU with a few threads, so that reading the mapped file
    (page faults, the disk) overlaps the copies and casts."""
    if device.type == "cpu" or len(state) < 2:
        return {k: to_run(v, device, dtype) for k, v in state.items()}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(state, pool.map(lambda v: to_run(v, device, dtype), state.values())))


def to_run(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One checkpoint tensor in the run's device and (floating) dtype. To a GPU it travels in its stored
    dtype and is cast there (the host never holds a converted copy); on the CPU it is cast once, or, when
    the dtype already matches, stays the memory-mapped tensor itself (no copy)."""
    target = dtype if t.is_floating_point() else t.dtype
    if device.type != "cpu":
        return t.to(device).to(target)
    return t.to(target)


def _find_esm_checkpoint(spec: str) -> Path:
    p = Path(spec).expanduser()
    if looks_like_hub_id(spec):
        raise ModelNotFoundError(
            f"ESM-2 model {spec!r} is not in the local Hugging Face cache ({hub_cache_dir()}; set HF_HOME or "
            f"HF_HUB_CACHE if it is elsewhere): `huggingface-cli download {spec}` on a machine with network "
            f"access, or pass a model directory, a fair-esm .pt or a name ({', '.join(ESM2_ARCHS)})")
    if p.suffix == ".pt" or os.sep in spec:
        if not p.is_file():
            raise ModelNotFoundError(f"ESM-2 checkpoint {p} does not exist. Give a fair-esm .pt file or a model name "
                                     f"({', '.join(ESM2_ARCHS)}).")
        return p
    if spec not in ESM2_ARCHS:
        raise ModelNotFoundError(f"unknown model {spec!r}: give an ESM-2 name ({', '.join(ESM2_ARCHS)}), a fair-esm "
                                 f".pt path, a Hugging Face ESM-2 or DNABERT-S directory, or a hub id in the "
                                 f"local HF cache")
    path = esm_hub_path(spec)
    if path.is_file():
        return path
    url = FAIR_ESM_URL.format(name=spec)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
        return path
    except Exception as e:  # no network, proxy, disk
        raise ModelNotFoundError(
            f"ESM-2 weights {spec} not found at {path} and downloading {url} failed ({type(e).__name__}). "
            f"Download that file on a machine with network access into {path.parent} (or set TORCH_HOME), "
            f"pass the .pt path with --model, or use --random-init for a test run.") from None


def read_fair_esm_checkpoint(path: Path) -> tuple[ESM2Config, dict]:
    """Config and encoder state dict of a fair-esm ESM-2 ``.pt`` (prefixes stripped), loaded safely."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    zipped = magic == b"PK\x03\x04"
    if not zipped and not magic.startswith(b"\x80"):  # neither torch.save's zip nor a legacy pickle
        raise CheckpointError(f"{path}: not a loadable fair-esm checkpoint: not a PyTorch file (torch.save). "
                              f"Give a fair-esm ESM-2 .pt file or a model name ({', '.join(ESM2_ARCHS)}).")
    _read_ahead(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as e:
        raise CheckpointError(f"{path}: not a loadable fair-esm checkpoint ({torch_error_line(e)}). "
                              f"Only plain tensors and fair-esm's config are accepted.") from None
    try:
        m = data["cfg"]["model"]
        cfg = ESM2Config(int(m.encoder_layers), int(m.encoder_embed_dim), int(m.encoder_attention_heads),
                         bool(getattr(m, "token_dropout", True)))
        raw = data["model"]
    except (KeyError, TypeError, AttributeError, IndexError):
        raise CheckpointError(f"{path}: not a fair-esm ESM-2 checkpoint (expected 'model' and 'cfg'['model'] "
                              f"with encoder_layers/encoder_embed_dim/encoder_attention_heads)") from None
    state = {}
    for k, v in raw.items():
        for prefix in ("encoder.sentence_encoder.", "encoder."):
            if k.startswith(prefix):
                k = k[len(prefix):]
                break
        state[k] = v
    return cfg, state


def _read_ahead(path: Path) -> None:
    """Ask the kernel to start reading the whole file now (asynchronous readahead: the mapped tensors'
    page faults then mostly find their pages in the cache). A hint only; ignored where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
    except (AttributeError, OSError):
        pass


def _load_strict(module: PackedESM2, state: dict, path) -> None:
    state = {k: v for k, v in state.items() if not k.startswith(PackedESM2.UNUSED_PREFIXES)}
    fits = f"{path}: weights do not fit ESM-2 ({module.cfg.num_layers} layers, dim {module.cfg.embed_dim})"
    try:
        result = module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # size mismatches raise even with strict=False
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise CheckpointError(f"{fits}: {detail[:300]}. Is this the right model file?") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{fits}; missing {result.missing_keys[:4]}, unexpected "
                              f"{result.unexpected_keys[:4]}. Is this the right model file?")
