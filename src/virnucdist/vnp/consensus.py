"""Stage 6 of VirNucPro: prediction table and per-chunk consensus (the per-read and per-pair
summaries are written by :mod:`virnucdist.vnp.outputs` and :mod:`virnucdist.vnp.pairs`).

Formats (``shared/spec/virnucpro-stages.md`` section 6):

- ``prediction_results.txt``: tab-separated, header
  ``Sequence_ID\\tPrediction\\tscore1\\tscore2``; scores written as
  ``str(numpy.float32(x))`` (score1 = P(others), score2 = P(virus));
- ``prediction_results_highestscore.csv`` (tab-separated despite its name), header
  ``Modified_ID\\tIs_Virus``: Modified_ID = Sequence_ID minus its last two characters
  (so the decision is per CHUNK), rows sorted as strings (``chunk_10`` before
  ``chunk_2``), Is_Virus = max(score2) >= max(score1) over the chunk's frames
  (a tie is True), written ``True``/``False``.

Scores read back from a text file are parsed with ``numpy.float32`` so that the
comparison uses exactly the values that were written.
"""

from __future__ import annotations

import itertools
import operator
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

__all__ = [
    "PREDICTION_HEADER",
    "Consensus",
    "ChunkConsensus",
    "format_scores",
    "prediction_line",
    "CONSENSUS_HEADER",
    "SUMMARY_HEADER",
    "PredictionRow",
    "format_score",
    "prediction_label",
    "write_predictions",
    "read_predictions",
    "chunk_of",
    "consensus",
    "write_consensus",
    "read_consensus",
]

PREDICTION_HEADER = ("Sequence_ID", "Prediction", "score1", "score2")
CONSENSUS_HEADER = ("Modified_ID", "Is_Virus")
SUMMARY_HEADER = ("read_id", "chunks", "kept_frames", "best_virus_score", "call")


class PredictionRow(NamedTuple):
    """One row of ``prediction_results.txt`` (scores as ``numpy.float32``)."""

    seq_id: str
    prediction: str
    score1: np.float32
    score2: np.float32


def format_score(x: float) -> str:
    """A score as the original writes it: ``str(numpy.float32(x))`` (shortest round trip)."""
    return str(np.float32(x))


def format_scores(values) -> list[str]:
    """:func:`format_score` of each value of an array, as float32 (``str`` of numpy's own float32 scalars)."""
    return list(map(str, np.asarray(values, dtype=np.float32)))


def prediction_label(score1: float, score2: float) -> str:
    """``virus`` when class 1 wins the argmax, else ``others`` (a tie goes to index 0)."""
    return "virus" if np.float32(score2) > np.float32(score1) else "others"


def write_predictions(path: str | Path, rows: Iterable[tuple[str, float, float]]) -> int:
    """Write ``prediction_results.txt`` from ``(seq_id, score1, score2)`` rows; returns the count.

    The ``Prediction`` column is derived with :func:`prediction_label`.
    """
    n = 0
    with open(path, "w", newline="\n") as fh:
        fh.write("\t".join(PREDICTION_HEADER) + "\n")
        for seq_id, s1, s2 in rows:
            fh.write(prediction_line(seq_id, s1, s2))
            n += 1
    return n


def prediction_line(seq_id: str, score1: float, score2: float) -> str:
    """One line of ``prediction_results.txt`` (newline included)."""
    return f"{seq_id}\t{prediction_label(score1, score2)}\t{format_score(score1)}\t{format_score(score2)}\n"


def _parse_score(text: str, path: str | Path, lineno: int) -> np.float32:
    try:
        return np.float32(text)
    except ValueError:
        raise ValueError(f"{path}, line {lineno}: score {text!r} is not a number") from None


def read_predictions(path: str | Path) -> Iterator[PredictionRow]:
    """Rows of a ``prediction_results.txt`` file, scores parsed as ``numpy.float32``."""
    with open(path, "r", newline=None) as fh:
        header = fh.readline().rstrip("\r\n")
        if tuple(header.split("\t")) != PREDICTION_HEADER:
            raise ValueError(
                f"{path}, line 1: expected the tab-separated header "
                f"'Sequence_ID Prediction score1 score2', got {header!r}; is this a prediction_results.txt file?"
            )
        for lineno, line in enumerate(fh, 2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 4:
                raise ValueError(f"{path}, line {lineno}: expected 4 tab-separated fields, got {len(fields)}")
            seq_id, pred, s1, s2 = fields
            yield PredictionRow(seq_id, pred, _parse_score(s1, path, lineno), _parse_score(s2, path, lineno))


def chunk_of(seq_id: str) -> str:
    """Modified_ID of a frame record: its ID minus the last two characters (the frame suffix)."""
    return seq_id[:-2]


def consensus(rows: Iterable[tuple[str, float, float]]) -> list[tuple[str, bool]]:
    """Per-chunk decisions ``(Modified_ID, Is_Virus)`` sorted by Modified_ID as strings.

    ``rows`` are ``(seq_id, score1, score2)``; :class:`PredictionRow` objects work too.
    """
    acc = Consensus()
    for row in rows:
        if isinstance(row, PredictionRow):
            acc.add(row.seq_id, row.score1, row.score2)
        else:
            acc.add(*row)
    return acc.decisions()


class Consensus:
    """The consensus rule fed one frame at a time (memory: one pair of maxima per chunk)."""

    def __init__(self):
        self.best: dict[str, list[np.float32]] = {}

    def add(self, seq_id: str, score1: float, score2: float) -> None:
        s1, s2 = np.float32(score1), np.float32(score2)
        key = chunk_of(seq_id)
        cur = self.best.get(key)
        if cur is None:
            self.best[key] = [s1, s2]
        else:
            cur[0] = max(cur[0], s1)
            cur[1] = max(cur[1], s2)

    def decisions(self) -> list[tuple[str, bool]]:
        """``(Modified_ID, Is_Virus)`` sorted by Modified_ID as strings."""
        return [(key, bool(v[1] >= v[0])) for key, v in sorted(self.best.items())]


class ChunkConsensus:
    """The consensus rule fed whole chunks, as columns: each chunk's Modified_ID with the highest
    score1 and score2 of its frames. The same Modified_ID given twice (two reads of one id) is one
    chunk whose maxima are taken over both, as :class:`Consensus` does."""

    def __init__(self):
        self.keys: list[str] = []
        self.max1: list[np.ndarray] = []
        self.max2: list[np.ndarray] = []

    def add(self, keys: list[str], max1, max2) -> None:
        self.keys += keys
        self.max1.append(np.asarray(max1, dtype=np.float32))
        self.max2.append(np.asarray(max2, dtype=np.float32))

    def decisions(self) -> Iterable[tuple[str, bool]]:
        """``(Modified_ID, Is_Virus)`` sorted by Modified_ID as strings."""
        keys = self.keys
        if not keys:
            return []
        order = sorted(range(len(keys)), key=keys.__getitem__)
        ks = [keys[i] for i in order]
        o = np.asarray(order, dtype=np.int64)
        m1, m2 = np.concatenate(self.max1)[o], np.concatenate(self.max2)[o]
        new = np.fromiter(map(operator.ne, ks[1:], ks[:-1]), dtype=bool, count=len(ks) - 1)
        if not new.all():  # repeated Modified_IDs: one chunk each
            starts = np.flatnonzero(np.concatenate([[True], new]))
            m1, m2 = np.maximum.reduceat(m1, starts), np.maximum.reduceat(m2, starts)
            ks = [ks[i] for i in starts.tolist()]
        return zip(ks, (m2 >= m1).tolist())


def write_consensus(path: str | Path, decisions: Iterable[tuple[str, bool]], batch: int = 1 << 16) -> int:
    """Write ``prediction_results_highestscore.csv`` (tab-separated); returns the row count."""
    n = 0
    it = iter(decisions)
    with open(path, "w", newline="\n") as fh:
        fh.write("\t".join(CONSENSUS_HEADER) + "\n")
        while True:
            lines = [f"{key}\t{'True' if is_virus else 'False'}\n" for key, is_virus in itertools.islice(it, batch)]
            if not lines:
                break
            fh.write("".join(lines))
            n += len(lines)
    return n


def read_consensus(path: str | Path) -> list[tuple[str, bool]]:
    """Read back a ``prediction_results_highestscore.csv`` file."""
    out: list[tuple[str, bool]] = []
    with open(path, "r", newline=None) as fh:
        header = fh.readline().rstrip("\r\n")
        if tuple(header.split("\t")) != CONSENSUS_HEADER:
            raise ValueError(f"{path}, line 1: expected the header 'Modified_ID<TAB>Is_Virus', got {header!r}")
        for lineno, line in enumerate(fh, 2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            key, _, flag = line.rpartition("\t")
            if flag not in ("True", "False"):
                raise ValueError(f"{path}, line {lineno}: Is_Virus must be True or False, got {flag!r}")
            out.append((key, flag == "True"))
    return out
