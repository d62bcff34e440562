"""What the index is built from: input files with their sample and mate, and read pairs.

An input is a path or an :class:`InputFile` (a path with an optional sample name, mate
number and an ``interleaved`` flag). :func:`pair_layout` decides, from the scanned ids,
which files are the two files of a read pair and how the index orders their records:

* Two neighbouring files of the same sample whose first records are mates (identical
  ids, or ids ending ``/1`` and ``/2``; Illumina's ``1:N:0:...`` comment is not part of
  the id) are a pair, recognised automatically; ``InputFile(mate=1)`` followed by
  ``InputFile(mate=2)`` says so explicitly. Every record must then be the mate of the
  record at the same position in the other file; the first one that is not (another
  id, or one file shorter) is an error naming both files and the record. Files of different
  formats (FASTA beside FASTQ) or of the same content are never paired automatically.
* An ``interleaved`` file holds mates one after the other (records 1 and 2, 3 and 4, ...).
* Paired records are stored interleaved (``r1/1, r1/2, r2/1, ...``) with ids ``{id}/1``
  and ``{id}/2`` (``id`` without its ``/1``, ``/2``), mate number 1 or 2; any other
  record keeps its id and has mate number 0.
* Two files whose ids collide but are not mates in order are not a pair: the index's
  duplicate-id check names both records, as for any other collision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .fasta import FastaError

__all__ = ["InputFile", "as_inputs", "pair_layout", "PairLayout"]


@dataclass(frozen=True)
class InputFile:
    """One input file: ``sample`` groups files into samples (None: the one unnamed sample);
    ``mate`` (1 or 2) says the file holds the first or second reads of a pair (None: told
    from the ids); ``interleaved``: the file holds mates one after the other."""

    path: str
    sample: str | None = None
    mate: int | None = None
    interleaved: bool = False

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))
        if self.mate not in (None, 1, 2):
            raise ValueError(f"InputFile {self.path}: mate must be 1, 2 or None, not {self.mate!r}")
        if self.interleaved and self.mate is not None:
            raise ValueError(f"InputFile {self.path}: an interleaved file holds both mates; give no mate")

    def spec(self) -> list:
        """What, besides the content, makes this input a different run: ``[sample, mate, interleaved]``."""
        return [self.sample, self.mate, bool(self.interleaved)]


def as_inputs(paths, interleaved: bool = False) -> list[InputFile]:
    """Paths or InputFiles -> InputFiles with absolute paths; ``interleaved`` applies to plain paths."""
    if isinstance(paths, (str, os.PathLike, InputFile)):
        paths = [paths]
    out = []
    for p in paths:
        f = p if isinstance(p, InputFile) else InputFile(os.fspath(p), interleaved=interleaved)
        out.append(InputFile(os.path.abspath(f.path), f.sample, f.mate, f.interleaved))
    return out


def _split(rid: str) -> tuple[str, int]:
    """``('x', 1)`` for ``'x/1'``, ``('x', 2)`` for ``'x/2'``, ``('x', 0)`` for ``'x'``."""
    if len(rid) > 2 and rid[-2] == "/" and rid[-1] in "12":
        return rid[:-2], int(rid[-1])
    return rid, 0


def _mates(a: str, b: str) -> bool:
    """``a`` (first read) and ``b`` (second read) name the two reads of one pair."""
    if a == b:
        return True
    (ba, ma), (bb, mb) = _split(a), _split(b)
    return ba == bb and ma in (0, 1) and mb in (0, 2)


_STEP = 1 << 16


def _first_mismatch(a, b) -> int:
    """Position of the first ``k`` where ``a[k]``, ``b[k]`` are not mates; -1 if none (common length).
    Read in slices: lists of a slice of the ids at a time, never of all."""
    n = min(len(a), len(b))
    for lo in range(0, n, _STEP):
        k = _mismatch_in(a[lo:min(n, lo + _STEP)], b[lo:min(n, lo + _STEP)])
        if k >= 0:
            return lo + k
    return -1


def _mismatch_in(a: list[str], b: list[str]) -> int:
    if a == b:
        return -1
    for k in range(len(a)):
        if not _mates(a[k], b[k]):
            return k
    return -1


def _first_unmated(ids) -> int:
    """Interleaved ids: position ``k`` (in pairs) of the first pair ``ids[2k], ids[2k + 1]`` not mates; -1 if none."""
    n = len(ids) // 2
    for lo in range(0, n, _STEP):
        part = ids[2 * lo:2 * min(n, lo + _STEP)]
        k = _mismatch_in(part[0::2], part[1::2])
        if k >= 0:
            return lo + k
    return -1


def renamed(kind: str, ids: list[str], other_mate_first: int = 0) -> list[str]:
    """The index's ids of a slice of a paired segment (see :class:`PairLayout`): ``kind`` "pair": ``ids``
    are the first file's, each giving ``{id}/1``, ``{id}/2``; "interleaved": the file's, ``{id}/1`` at even
    positions of the file (``other_mate_first``: the slice starts at an odd position)."""
    if kind == "pair":
        return [f"{b}/{m}" for b in (_split(x)[0] for x in ids) for m in (1, 2)]
    return [f"{_split(x)[0]}/{1 + ((j + other_mate_first) & 1)}" for j, x in enumerate(ids)]


@dataclass
class PairLayout:
    """How the index's rows come from the files' scans: ``segments`` in row order, each
    ``(kind, file number, sample number)``: "rows" (the file's records as they are), "interleaved"
    (the file's records, mates alternating, ids renamed ``{id}/1``, ``{id}/2``) or "pair" (the records
    of the file and of the next one alternating, ids renamed from the first file's); ``preset``: per
    file number, its own mate numbers (BAM)."""

    segments: list[tuple[str, int, int]]
    samples: list
    preset: dict

    def mate(self, kind: str, f: int, lo: int, hi: int) -> np.ndarray:
        """int8 mate numbers of rows ``[lo, hi)`` of a segment (0 single, 1 or 2 a mate)."""
        if kind == "rows":
            return np.asarray(self.preset[f][lo:hi], np.int8) if f in self.preset else np.zeros(hi - lo, np.int8)
        return (1 + (np.arange(lo, hi) & 1)).astype(np.int8)


def _pair_error(a: str, b: str, k: int, ids_a, ids_b, lines_a, lines_b) -> FastaError:
    na, nb = len(ids_a), len(ids_b)
    if k < 0:                          # one file shorter
        longer, lines, ids, n = (a, lines_a, ids_a, nb) if na > nb else (b, lines_b, ids_b, na)
        other = b if longer == a else a
        return FastaError(longer, int(lines[n]), f"read {ids[n]!r} (record {n + 1}) has no mate: {a} holds "
                          f"{na} records and {b} holds {nb}; the two files of a pair must hold the same reads "
                          f"in the same order ({other} looks cut short: re-download it)")
    return FastaError(a, int(lines_a[k]), f"record {k + 1} is {ids_a[k]!r} but record {k + 1} of {b} (line "
                      f"{int(lines_b[k])}) is {ids_b[k]!r}: these look like the two files of a read pair (their "
                      "first reads are mates) but the mates are not in the same order; sort both files the same "
                      "way, or give them as separate samples")


def _interleaved_error(path: str, ids: list[str], lines, k: int) -> FastaError:
    if k + 1 >= len(ids):
        return FastaError(path, int(lines[k]), f"interleaved file has an odd number of records: read {ids[k]!r} "
                          f"(record {k + 1}) has no mate after it")
    return FastaError(path, int(lines[k + 1]), f"interleaved file: record {k + 2} ({ids[k + 1]!r}) is not the mate "
                      f"of record {k + 1} ({ids[k]!r}); mates must alternate (id/1 then id/2, or equal ids)")


def pair_layout(specs: Sequence[InputFile], ids_per_file: Sequence, lines_per_file: Sequence,
                kinds: Sequence | None = None, preset: dict[int, np.ndarray] | None = None) -> PairLayout:
    """Recognise pairs (see the module docstring) and return the index's row layout.

    ``ids_per_file``, ``lines_per_file``: per file, its ids and header line numbers (sequences,
    read in slices). ``kinds``: per file, ``(format, content digest)``: files are paired automatically
    only when of one format and of different content (the same reads twice are duplicates).
    ``preset``: per file number, mate numbers the file says itself (BAM flags; ids already
    carry ``/1``, ``/2``): kept as they are, never paired with another file."""
    preset = preset or {}
    kinds = list(kinds) if kinds is not None else [(None, i) for i in range(len(specs))]
    names: dict = {}
    for s in specs:
        names.setdefault(s.sample, len(names))
    segments = []
    f = 0
    while f < len(specs):
        s, fid, lines = specs[f], ids_per_file[f], lines_per_file[f]
        sample_no = names[s.sample]
        nxt = specs[f + 1] if f + 1 < len(specs) else None
        if f in preset:
            segments.append(("rows", f, sample_no))
            f += 1
        elif s.interleaved:
            bad = -1
            if len(fid) % 2:
                bad = len(fid) - 1
            k = _first_unmated(fid)
            if k >= 0:
                bad = 2 * k
            if bad >= 0:
                raise _interleaved_error(s.path, fid, lines, bad)
            segments.append(("interleaved", f, sample_no))
            f += 1
        elif nxt is not None and f + 1 not in preset and _is_pair(s, nxt, fid, ids_per_file[f + 1], kinds[f],
                                                                   kinds[f + 1]):
            gid, glines = ids_per_file[f + 1], lines_per_file[f + 1]
            k = _first_mismatch(fid, gid)
            if k >= 0 or len(fid) != len(gid):
                raise _pair_error(s.path, nxt.path, k, fid, gid, lines, glines)
            segments.append(("pair", f, sample_no))
            f += 2
        else:
            if nxt is not None and f + 1 not in preset and _is_pair(nxt, s, ids_per_file[f + 1], fid, kinds[f + 1],
                                                                    kinds[f]) and _split(fid[0])[1] == 2:
                raise FastaError(s.path, None, f"holds second reads of pairs ({fid[0]!r}) and the next input, "
                                 f"{nxt.path}, their first reads ({ids_per_file[f + 1][0]!r}): give the two files "
                                 "of a pair in order, R1 then R2")
            if s.mate is not None:
                raise FastaError(s.path, None, f"given as mate {s.mate} of a pair, but the "
                                 f"{'next' if s.mate == 1 else 'previous'} input is not its mate file; give "
                                 "the two files of a pair one after the other (mate 1, then mate 2)")
            segments.append(("rows", f, sample_no))
            f += 1
    return PairLayout(segments, list(names), dict(preset))


def _is_pair(a: InputFile, b: InputFile, ids_a, ids_b, kind_a, kind_b) -> bool:
    if b.interleaved or a.sample != b.sample:
        return False
    if a.mate == 1 and b.mate == 2:
        return True
    if a.mate is not None or b.mate is not None:
        return False
    if kind_a[0] != kind_b[0] or kind_a[1] == kind_b[1]:    # FASTA beside FASTQ, or one content twice
        return False
    return bool(ids_a) and bool(ids_b) and _mates(ids_a[0], ids_b[0])
