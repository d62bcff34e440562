"""VirNucPro's result files from scored reads in input order (what predict's finalize writes).

``reads()`` is a callable that yields a :class:`ScoredRead` per read, in input order, every time it
is called (the files are written one after the other, each from a fresh pass). Every file is written
to a temporary name, fsync'd and renamed: a reader never sees a half-written file.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import h5py

from ..data.fasta import write_fasta
from ..writers import STR, replace_durably
from .chunk import chunk_records
from .consensus import (
    PREDICTION_HEADER,
    SUMMARY_HEADER,
    Consensus,
    ReadFrames,
    prediction_line,
    summarize_read,
    write_consensus,
)
from .pairs import PairWriter
from .translate import translate_records

__all__ = ["ScoredRead", "atomic", "write_result_files", "write_stage_files", "write_frame_embeddings"]


class ScoredRead(NamedTuple):
    read_id: str
    n_chunks: int  # 0: empty (or skipped) read
    frame_ids: list[str]  # kept frames, output order
    score1: object  # [frames] array
    score2: object
    extra: object = None  # e.g. (window, slice) to reach the frames' embeddings
    mate: int = 0  # 1, 2: a mate of a pair (pair_summary.tsv); 0: single-end


def atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then a durable rename onto ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    replace_durably(tmp, path)


def write_result_files(out: Path, reads: Callable[[], Iterator[ScoredRead]], paired: bool = False) -> dict:
    """``prediction_results.txt``, ``prediction_results_highestscore.csv`` and ``read_summary.tsv`` in ONE
    pass over the reads (the consensus keeps one pair of maxima per chunk); with ``paired`` also
    ``pair_summary.tsv`` (:mod:`virnucdist.vnp.pairs`, from the reads' mate numbers); returns counts."""
    names = ("prediction_results.txt", "read_summary.tsv", "prediction_results_highestscore.csv") + \
        (("pair_summary.tsv",) if paired else ())
    tmp = {n: out / (n + ".tmp") for n in names}
    counts = {"frames": 0, "chunks": 0, "virus": 0, "others": 0, "no_frame": 0, "empty": 0}
    acc = Consensus()
    try:
        with ExitStack() as stack:
            pred = stack.enter_context(open(tmp[names[0]], "w", newline="\n"))
            summ = stack.enter_context(open(tmp[names[1]], "w", newline="\n"))
            pred.write("\t".join(PREDICTION_HEADER) + "\n")
            summ.write("\t".join(SUMMARY_HEADER) + "\n")
            pairs = PairWriter(stack.enter_context(open(tmp[names[3]], "w", newline="\n"))) if paired else None
            for r in reads():
                s1 = r.score1.tolist() if r.frame_ids else []
                s2 = r.score2.tolist() if r.frame_ids else []
                for fid, a, b in zip(r.frame_ids, s1, s2):
                    pred.write(prediction_line(fid, a, b))
                    acc.add(fid, a, b)
                line = summarize_read(ReadFrames(r.read_id, r.n_chunks,
                                                 tuple((f[:-2], a, b) for f, a, b in zip(r.frame_ids, s1, s2))))
                summ.write(line.to_line() + "\n")
                counts[line.call] += 1
                counts["frames"] += len(r.frame_ids)
                counts["chunks"] += r.n_chunks
                if pairs is not None:
                    pairs.add(r.read_id, r.mate, r.n_chunks, s1, s2, line.call)
        if pairs is not None:
            counts["pairs"] = pairs.close()
        counts["chunks_scored"] = write_consensus(tmp[names[2]], acc.decisions())
    except BaseException:
        for t in tmp.values():
            t.unlink(missing_ok=True)
        raise
    for n in names:
        replace_durably(tmp[n], out / n)
    return counts


def write_stage_files(out: Path, records: Callable[[], Iterable[tuple[str, str]]], chunk_size: int) -> None:
    """``chunked.fa``, ``identified_nucleotide.fa`` and ``identified_protein.faa``: the stage CLI's files."""
    atomic(out / "chunked.fa", lambda p: write_fasta(p, chunk_records(records(), chunk_size)))
    with open(out / "identified_protein.faa.tmp", "w", newline="\n") as prot:
        def nucleotides():
            for fr in translate_records(chunk_records(records(), chunk_size)):
                prot.write(f">{fr.id}\n{fr.protein}\n")
                yield fr.id, fr.nucleotide

        atomic(out / "identified_nucleotide.fa", lambda p: write_fasta(p, nucleotides()))
    replace_durably(out / "identified_protein.faa.tmp", out / "identified_protein.faa")


def write_frame_embeddings(path: Path, reads: Callable[[], Iterator[ScoredRead]], n_frames: int, dim: int,
                           vectors: Callable[[ScoredRead], object], attrs: dict) -> None:
    """One model's frame embeddings in embed's layout (``ids``, ``embeddings`` [frames, dim])."""
    def write(tmp):
        with h5py.File(tmp, "w", locking=False) as f:
            ids = f.create_dataset("ids", (n_frames,), dtype=STR)
            emb = f.create_dataset("embeddings", (n_frames, dim), dtype="f4")
            at = 0
            for r in reads():
                if r.frame_ids:
                    ids[at:at + len(r.frame_ids)] = r.frame_ids
                    emb[at:at + len(r.frame_ids)] = vectors(r)
                    at += len(r.frame_ids)
            f.attrs.update(attrs)

    atomic(path, write)
