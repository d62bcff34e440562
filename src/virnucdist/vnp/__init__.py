"""VirNucPro stages, reproduced exactly (see shared/spec/virnucpro-stages.md).

- :mod:`~virnucdist.vnp.chunk`: reads -> overlapping 300/500-bp chunks;
- :mod:`~virnucdist.vnp.translate`: chunks -> stop-free six-frame translations;
- :mod:`~virnucdist.vnp.consensus`: scores -> prediction table, per-chunk calls (the result files,
  per-read and per-pair summaries included, are written by :mod:`~virnucdist.vnp.outputs`).
"""

from virnucdist.vnp.chunk import ChunkStats, chunk_records, chunk_spans
from virnucdist.vnp.consensus import (
    consensus,
    format_score,
    read_predictions,
    write_consensus,
    write_predictions,
)
from virnucdist.vnp.translate import Frame, six_frame, translate_records

__all__ = [
    "ChunkStats",
    "chunk_spans",
    "chunk_records",
    "Frame",
    "six_frame",
    "translate_records",
    "format_score",
    "write_predictions",
    "read_predictions",
    "consensus",
    "write_consensus",
]
