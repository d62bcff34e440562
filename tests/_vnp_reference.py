"""The per-read rules written one frame and one read at a time: the reference that predict's
vectorised finalize (:mod:`virnucdist.vnp.outputs`, :class:`virnucdist.vnp.pairs.PairWriter`'s
array path) is tested against, and the read-summary rule in its plainest form."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from virnucdist.vnp.consensus import SUMMARY_HEADER, format_score
from virnucdist.vnp.pairs import PairWriter


def read_of_chunk(chunk_id: str) -> str:
    """Read ID of ``{read_id}_chunk_{k}`` (split at the last ``_chunk_``)."""
    head, sep, _ = chunk_id.rpartition("_chunk_")
    return head if sep else chunk_id


def chunk_is_virus(scores: Iterable[tuple[float, float]]) -> bool:
    """The consensus rule over one chunk's frames: max(score2) >= max(score1) (tie: True)."""
    s1s, s2s = zip(*((np.float32(a), np.float32(b)) for a, b in scores))
    return bool(max(s2s) >= max(s1s))


@dataclass(frozen=True)
class ReadFrames:
    """What the summary needs to know about one read.

    ``frames`` holds ``(chunk_id, score1, score2)`` for each kept, scored frame of the
    read (``chunk_id`` WITHOUT the frame suffix). ``chunks == 0`` marks an empty read.
    """

    read_id: str
    chunks: int
    frames: Sequence[tuple[str, float, float]] = ()


@dataclass(frozen=True)
class ReadSummary:
    """One row of ``read_summary.tsv``."""

    read_id: str
    chunks: int
    kept_frames: int
    best_virus_score: np.float32 | None
    call: str  # "virus" | "others" | "no_frame" | "empty"

    def to_line(self) -> str:
        best = "NA" if self.best_virus_score is None else format_score(self.best_virus_score)
        return f"{self.read_id}\t{self.chunks}\t{self.kept_frames}\t{best}\t{self.call}"


def summarize_read(read: ReadFrames) -> ReadSummary:
    """Call a read: ``virus`` if any of its chunks is virus by the consensus rule,
    ``others`` otherwise, ``no_frame`` when no frame was kept, ``empty`` for an empty read."""
    if read.chunks == 0:
        return ReadSummary(read.read_id, 0, 0, None, "empty")
    if not read.frames:
        return ReadSummary(read.read_id, read.chunks, 0, None, "no_frame")
    by_chunk: dict[str, list[tuple[float, float]]] = {}
    for cid, s1, s2 in read.frames:
        by_chunk.setdefault(cid, []).append((s1, s2))
    virus = any(chunk_is_virus(scores) for scores in by_chunk.values())
    best = max(np.float32(s2) for _, _, s2 in read.frames)
    return ReadSummary(read.read_id, read.chunks, len(read.frames), best, "virus" if virus else "others")


def write_read_summary(path: str | Path, reads: Iterable[ReadFrames]) -> dict[str, int]:
    """Write ``read_summary.tsv``; returns how many reads got each call."""
    counts = {"virus": 0, "others": 0, "no_frame": 0, "empty": 0}
    with open(path, "w", newline="\n") as fh:
        fh.write("\t".join(SUMMARY_HEADER) + "\n")
        for read in reads:
            s = summarize_read(read)
            counts[s.call] += 1
            fh.write(s.to_line() + "\n")
    return counts


def add_scored(writer: PairWriter, read_id: str, mate: int, chunks: int, score1, score2, call: str) -> None:
    """A read given to ``writer`` by its frames' scores (``score1``, ``score2``: one value per kept frame)."""
    if mate not in (1, 2):
        return
    m1 = np.float32(max(map(np.float32, score1))) if len(score1) else None
    m2 = np.float32(max(map(np.float32, score2))) if len(score2) else None
    writer.add_read(read_id, mate, chunks, len(score1), m1, m2, format_score(m2) if m2 is not None else "NA", call)
