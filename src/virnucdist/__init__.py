"""virnucdist: distributed packed-sequence embedding and VirNucPro viral read identification.

The public API::

    run, RunResult                           the engine: runs a task on this rank (every task, one loop)
    Task, Block, RunPlan                     what a task tells the engine (virnucdist.engine.task)
    embed, EmbedConfig, EmbedTask            the embedding task (one call per torchrun rank)
    predict, PredictConfig, PredictTask      the VirNucPro pipeline (one call per torchrun rank)
    SequenceIndex                            FASTA/FASTQ index (ids, lengths, offsets, content hashes)
    partition                                contiguous, token-balanced, deterministic rank assignment
    PackedBatch, PackedBatchLoader           packed sequences (cu_seqlens, no padding), a packing DataLoader
    load_model                               packed ESM-2 / DNABERT-S from real checkpoints
    ShardWriter, ShardSchema, Column, Part   per-rank HDF5 shards, written in input order
    read_embeddings, iter_embeddings         read a finalized embeddings.h5
    init_distributed, DistContext            process group from torchrun's environment
"""

from __future__ import annotations

from ._version import __version__

# embed/predict are functions; the entrypoint modules of the same names (python -m virnucdist.embed /
# .predict) are callable too, so importing them never leaves a non-callable ``virnucdist.embed``.
from .engine import RunResult, run  # noqa: E402
from .launch.dist import DistContext, init_distributed  # noqa: E402
from .models.loading import load_model  # noqa: E402
from .packing import PackedBatch, PackedBatchLoader  # noqa: E402
from .data.index import SequenceIndex  # noqa: E402
from .sharding.partition import partition  # noqa: E402
from .engine.task import Block, RunPlan, Task  # noqa: E402
from .tasks.embed import EmbedConfig, EmbedTask, embed  # noqa: E402
from .tasks.predict import PredictConfig, PredictTask, predict  # noqa: E402
from .writers import Column, Part, ShardSchema, ShardWriter, iter_embeddings, read_embeddings  # noqa: E402

__all__ = [
    "__version__", "SequenceIndex", "partition", "PackedBatchLoader", "PackedBatch", "load_model",
    "ShardWriter", "ShardSchema", "Column", "Part", "read_embeddings", "iter_embeddings",
    "run", "RunResult", "Task", "Block", "RunPlan",
    "embed", "EmbedConfig", "EmbedTask", "predict", "PredictConfig", "PredictTask", "init_distributed", "DistContext",
]
