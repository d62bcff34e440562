"""The index of a run directory: checking the inputs, reusing or building ``OUTDIR/index``.

The engine calls :func:`open_run_index` on rank 0 (it returns the index and a ``commit``
that saves it once the run is accepted, so a refused run changes nothing) and
:func:`load_run_index` on every rank (memory-mapped: a rank touches the rows it works on).

Inputs must be regular files: the index reads each one twice (the scan, then the records a
rank works on), so a pipe or a process substitution (``<(zcat x.gz)``, ``/dev/stdin``) is
refused in one line saying what to do instead (gzip files are read directly; anything else,
save the stream to a file first). Spooling a stream to the run directory would cost its full
size on disk, which gzip inputs read in place no longer do.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .index import SequenceIndex
from .inputs import as_inputs

__all__ = ["INDEX_DIR", "check_input_files", "open_run_index", "load_run_index", "RunIndex"]

log = logging.getLogger("virnucdist")

INDEX_DIR = "index"
_OLD = ("index.npz", "inputs")           # format 2 and the decompressed gzip copies it kept


def check_input_files(inputs) -> None:
    """One line for an input that is missing, a directory, or a stream (pipe, FIFO, terminal)."""
    specs = as_inputs(inputs) if inputs else []
    if not specs:
        raise UserError("no input files given")
    seen: dict = {}
    for f in specs:
        p = f.path
        try:
            st = os.stat(p)
        except OSError:
            raise UserError(f"input {p} does not exist or is not a file") from None
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"input {p} is a directory, not a FASTA/FASTQ file")
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode):
            raise UserError(f"input {p} is a pipe or stream (e.g. <(zcat ...) or -), which can be read only once; "
                            "give the file itself (.gz files are read directly, no need to decompress them) "
                            "or save the stream to a file first")
        if not stat.S_ISREG(mode):
            raise UserError(f"input {p} does not exist or is not a file")
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise UserError(f"input {p} is given twice (also as {seen[key]}); give each file once (the two files "
                            f"of a read pair are R1 then R2)")
        seen[key] = p


class RunIndex:
    """What :func:`open_run_index` found: ``index`` (reused or just built) and ``commit``."""

    def __init__(self, out: Path, index: SequenceIndex, built: bool):
        self.out, self.index, self.built = out, index, built

    def discard(self) -> None:
        """The run directory is being reset (e.g. ``--overwrite``): save the index again on commit."""
        self.built = True
        _remove(self.out / INDEX_DIR)

    def commit(self) -> None:
        """Save the index into the run directory if it was built now; remove what older versions
        and killed saves left (``index.npz``, decompressed ``inputs/``, ``index.tmp*``)."""
        own = os.path.abspath(self.index._owner.root) if self.index._owner is not None else None
        for stale in [*self.out.glob(f"{INDEX_DIR}.tmp*"), *self.out.glob(f"{INDEX_DIR}.old*"),
                      *self.out.glob("index.npz.tmp*"), *(self.out / n for n in _OLD),
                      *(p for p in self.out.glob(".index-build-*") if os.path.abspath(p) != own)]:   # killed builds
            _remove(stale)
        if self.built:
            self.index.save(self.out / INDEX_DIR)
            self.built = False


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def open_run_index(out: Path, inputs, *, progress: Callable[[list], object] | None = None,
                   interleaved: bool = False) -> RunIndex:
    """Rank 0: the saved ``OUTDIR/index`` when it was built from these inputs (same paths, sizes,
    modification times, samples and mates), else a new index (nothing is written until
    :meth:`RunIndex.commit`). ``progress(paths)`` makes a bar with ``advance(nbytes)`` and ``close()``."""
    out = Path(out)
    specs = as_inputs(inputs, interleaved)
    cached = SequenceIndex.load_if_fresh(out / INDEX_DIR, specs)
    if cached is not None:
        return RunIndex(out, cached, built=False)
    bar = progress([f.path for f in specs]) if progress is not None else None
    try:                                 # written while built, beside where commit() puts it
        index = SequenceIndex.build(specs, progress=bar.advance if bar is not None else None,
                                    spool_dir=out if out.is_dir() else None)
    except BaseException:
        if bar is not None:  # the error is the last word: no progress line after it
            bar.close(summary=False)
        raise
    if bar is not None:
        bar.close()
    return RunIndex(out, index, built=True)


def load_run_index(out: Path) -> SequenceIndex:
    """Every rank: the run's index, memory-mapped."""
    return SequenceIndex.load(Path(out) / INDEX_DIR)
