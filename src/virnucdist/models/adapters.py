"""One small protocol in front of every model: what the engine may ask of it.

The engine knows :class:`EmbeddingModel` only: a tokenizer, a width, a number of
layers, which molecule it reads, and ``embed(batch, layers, per_token)``, which
returns the pooled vectors (and, if asked, the per-token states) of every layer
asked for from ONE forward pass. Each model's adapter holds what is particular
to it: how layers are numbered and checked, which tokens are pooled, which
tokens are per-token output. A new model is one more adapter class.

Layers are numbered like fair-esm's ``repr_layers``: 0 is the embedding output,
``num_layers`` (or -1) the last layer; negatives count from the end. Intermediate
layers are read with forward hooks on the layer modules, so the models' own
forward code stays the single source of the computation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from .dnabert_s import PackedDnaBertS, segment_mean
from .errors import LayerError
from .esm2 import PackedESM2, residue_mask, residue_mean
from .tokenization import SequenceTokenizer

__all__ = ["EmbedOutput", "EmbeddingModel", "ESM2Embedder", "DnaBertSEmbedder"]

Molecule = Literal["protein", "dna"]


@dataclass
class EmbedOutput:
    """What one forward pass gives for a :class:`~virnucdist.packing.PackedBatch` of B records.

    ``pooled[i]`` is the fp32 ``[B, D]`` pooled vector of the i-th layer asked for;
    with ``per_token``, ``tokens[i]`` is that layer's fp32 ``[M, D]`` per-token states
    of all records back to back, ``token_lengths`` (int64 ``[B]``, on the model's
    device) how many rows of it each record has (the same for every layer).
    """

    pooled: list[torch.Tensor]
    tokens: list[torch.Tensor] | None = None
    token_lengths: torch.Tensor | None = None


@runtime_checkable
class EmbeddingModel(Protocol):
    """A loaded model as the engine sees it (see :func:`~virnucdist.models.loading.load_model`)."""

    kind: str  # model family, recorded in manifests: "esm2" | "dnabert_s"
    name: str
    source: str  # where the weights came from (a path, or "random-init(...)")
    tokenizer: SequenceTokenizer
    dim: int
    num_layers: int
    molecule: Molecule  # what the input must be: "protein" | "dna"
    attrs: dict  # recorded with the output: pooling, random weights ...

    def check_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        """Layers normalised to ``0..num_layers`` (-1 = last); :class:`LayerError` if out of range."""
        ...

    def embed(self, batch, layers: Sequence[int] | None = None, per_token: bool = False) -> EmbedOutput:
        """Pooled (and per-token) fp32 outputs of ``layers`` (default: the last), one forward pass."""
        ...


@dataclass
class _Adapter:
    """Shared part of the adapters: layer checks and reading several layers in one pass."""

    name: str
    module: nn.Module
    tokenizer: SequenceTokenizer
    source: str
    attrs: dict = field(default_factory=dict)

    # per adapter class (plain class attributes, not dataclass fields)
    kind = "?"
    molecule = "protein"
    pooling = "?"

    def __post_init__(self):
        self.attrs = {"pooling": self.pooling, **self.attrs}

    @property
    def random_init(self) -> bool:
        return bool(self.attrs.get("random_weights"))

    def check_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        n = self.num_layers
        if isinstance(layers, int):
            layers = (layers,)
        if len(layers) == 0:
            raise LayerError(f"no --repr-layer given; {self.name} has layers 0..{n} (-1 = last)")
        out: list[int] = []
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise LayerError(f"--repr-layer {layer!r} is not an integer; {self.name} has layers 0..{n}")
            k = layer if layer >= 0 else n + 1 + layer
            if not 0 <= k <= n:
                raise LayerError(f"--repr-layer {layer} is outside {self.name}'s layers: 0..{n} "
                                 f"(0 = embedding output, {n} = last) or -1..-{n + 1} counted back from the last")
            if k in out:
                raise LayerError(f"--repr-layer {layer} is layer {k} of {self.name}, asked for twice; "
                                 f"give each layer once")
            out.append(k)
        return tuple(out)

    # per model: the hidden states of layer ``top`` from the forward (and the module(s)
    # whose output or input are the other layers), pooling, and which tokens are per-token output

    def _where(self, k: int) -> tuple[nn.Module, bool]:
        """Where layer k (below the highest asked) is read: (module, True: its input / False: its output)."""
        raise NotImplementedError

    def _forward(self, batch, top: int) -> torch.Tensor:
        raise NotImplementedError

    def _pool(self, hidden: torch.Tensor, batch) -> torch.Tensor:
        raise NotImplementedError

    def _per_token(self, hidden: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def hidden_states(self, batch, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Hidden states ``[T, D]`` (model dtype) of each (normalised) layer, one forward pass."""
        layers = self.check_layers(layers)
        top = max(layers)
        got: dict[int, torch.Tensor] = {}
        handles = []
        try:
            for k in layers:
                if k == top:
                    continue
                mod, is_input = self._where(k)
                if is_input:
                    handles.append(mod.register_forward_pre_hook(lambda m, args, k=k: got.__setitem__(k, args[0])))
                else:
                    handles.append(mod.register_forward_hook(lambda m, args, out, k=k: got.__setitem__(k, out)))
            got[top] = self._forward(batch, top)
        finally:
            for h in handles:
                h.remove()
        return {k: got[k] for k in layers}

    def embed(self, batch, layers: Sequence[int] | None = None, per_token: bool = False) -> EmbedOutput:
        layers = self.check_layers(layers if layers is not None else (self.num_layers,))
        hidden = self.hidden_states(batch, layers)
        pooled = [self._pool(hidden[k], batch) for k in layers]
        if not per_token:
            return EmbedOutput(pooled)
        per = [self._per_token(hidden[k], batch) for k in layers]
        return EmbedOutput(pooled, [t for t, _ in per], per[0][1])


class ESM2Embedder(_Adapter):
    """ESM-2: mean over residues (BOS/EOS excluded); per-token states are residues only,
    as fair-esm's extract.py writes them. The last layer includes the final LayerNorm."""

    kind = "esm2"
    molecule = "protein"
    pooling = "mean over residues (BOS/EOS excluded)"
    module: PackedESM2

    @property
    def dim(self) -> int:
        return self.module.cfg.embed_dim

    @property
    def num_layers(self) -> int:
        return self.module.cfg.num_layers

    def hidden_states(self, batch, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """One forward pass; the forward itself keeps the lower layers asked for (its layers run through
        ``step``, which module hooks would not see)."""
        layers = self.check_layers(layers)
        got: dict[int, torch.Tensor | None] = dict.fromkeys(layers)
        top = max(layers)
        got[top] = self.module(batch.tokens, batch.positions, batch.seg, batch.cu_seqlens, batch.max_seqlen, top,
                               keep=got)
        return {k: got[k] for k in layers}

    def _pool(self, hidden, batch):
        return residue_mean(hidden, batch.positions, batch.seg, batch.cu_seqlens)

    def _per_token(self, hidden, batch):
        cu = batch.cu_seqlens
        keep = residue_mask(batch.positions, batch.seg, cu)
        return hidden[keep].float(), (cu[1:] - cu[:-1]).to(torch.int64) - 2


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the highest layer asked for is computed."""


class DnaBertSEmbedder(_Adapter):
    """DNABERT-S: mean over all tokens ([CLS] and [SEP] included, as VirNucPro pools);
    per-token states are every token. Layer k < last stops the forward after block k."""

    kind = "dnabert_s"
    molecule = "dna"
    pooling = "mean over all tokens incl. [CLS]/[SEP]"
    module: PackedDnaBertS

    @property
    def dim(self) -> int:
        return self.module.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.module.config.num_hidden_layers

    def _where(self, k):
        m = self.module
        return (m.embeddings, False) if k == 0 else (m.encoder.layer[k - 1], False)

    def _forward(self, batch, top):
        m = self.module
        if top == self.num_layers:
            return m(batch.tokens, batch.cu_seqlens, batch.max_seqlen)
        out: list[torch.Tensor] = []

        def stop(mod, args, o):
            out.append(o)
            raise _Stop

        h = (m.embeddings if top == 0 else m.encoder.layer[top - 1]).register_forward_hook(stop)
        try:
            m(batch.tokens, batch.cu_seqlens, batch.max_seqlen)
        except _Stop:
            pass
        finally:
            h.remove()
        return out[0]

    def _pool(self, hidden, batch):
        return segment_mean(hidden, batch.cu_seqlens)

    def _per_token(self, hidden, batch):
        cu = batch.cu_seqlens
        return hidden.float(), (cu[1:] - cu[:-1]).to(torch.int64)
