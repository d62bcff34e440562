"""Sequence index (random access into FASTA) and deterministic rank assignment."""

from .index import SequenceIndex, build_index_distributed, quick_identity
from .partition import partition, plan_windows, rank_costs

__all__ = [
    "SequenceIndex",
    "build_index_distributed",
    "quick_identity",
    "partition",
    "plan_windows",
    "rank_costs",
]
