"""Sequence index (random access into FASTA) and deterministic rank assignment."""

from .index import SequenceIndex, quick_identity
from .partition import partition, plan_windows, rank_costs

__all__ = [
    "SequenceIndex",
    "quick_identity",
    "partition",
    "plan_windows",
    "rank_costs",
]
