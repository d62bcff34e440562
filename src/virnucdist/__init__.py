"""virnucdist: distributed packed-sequence embedding and VirNucPro viral read identification.

The public API::

    SequenceIndex, build_index_distributed   sharded FASTA index (ids, lengths, offsets)
    partition                                token-balanced, deterministic rank assignment
    PackedBatchLoader, PackedBatch           token-budget packing DataLoader (cu_seqlens, no padding)
    load_model, LoadedModel                  packed ESM-2 / DNABERT-S from real checkpoints
    ShardWriter, finalize_embeddings         per-rank HDF5 shards and the ordered merge
    read_embeddings, iter_embeddings         read a finalized embeddings.h5
    embed, EmbedConfig                       the embedding job (one call per torchrun rank)
    predict, PredictConfig                   the VirNucPro pipeline (one call per torchrun rank)
    init_distributed, DistContext            process group from torchrun's environment
"""

from __future__ import annotations

__version__ = "0.1.0"

# embed/predict are functions; the entrypoint modules of the same names
# (python -m virnucdist.embed / .predict) are thin wrappers that the package never imports.
from .embedding import EmbedConfig, embed  # noqa: E402
from .launch.dist import DistContext, init_distributed  # noqa: E402
from .models.loading import LoadedModel, load_model  # noqa: E402
from .packing import PackedBatch, PackedBatchLoader  # noqa: E402
from .prediction import PredictConfig, predict  # noqa: E402
from .sharding.index import SequenceIndex, build_index_distributed  # noqa: E402
from .sharding.partition import partition  # noqa: E402
from .writers import ShardWriter, finalize_embeddings, iter_embeddings, read_embeddings  # noqa: E402

__all__ = [
    "__version__", "SequenceIndex", "build_index_distributed", "partition", "PackedBatchLoader", "PackedBatch",
    "load_model", "LoadedModel", "ShardWriter", "finalize_embeddings", "read_embeddings", "iter_embeddings",
    "embed", "EmbedConfig", "predict", "PredictConfig", "init_distributed", "DistContext",
]
