"""Sequence index (random access into FASTA) and deterministic rank assignment."""

from .index import SequenceIndex, build_index_distributed, quick_identity
from .partition import partition, rank_costs, rank_of, rank_share

__all__ = [
    "SequenceIndex",
    "build_index_distributed",
    "quick_identity",
    "partition",
    "rank_share",
    "rank_of",
    "rank_costs",
]
