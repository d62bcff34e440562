"""BAM input through pysam (an optional extra: ``pip install "virnucdist[bam]"``).

A BAM file is told by its content (BGZF whose first decompressed bytes are ``BAM\\1``), never
by its name. Two functions are all the index needs:

* :func:`scan_bam` walks the file once and yields ``(name, seq, voffset, mate)`` per read:
  ``voffset`` is the record's BGZF virtual offset (where :func:`read_bam` finds it again) and
  ``mate`` is 1 or 2 for the first or second read of a pair (flags 0x40 / 0x80), 0 otherwise;
* :func:`read_bam` reads one record back by its virtual offset and returns its sequence.

Unaligned BAM (what sequencing centres hand out) holds every read as sequenced. Aligned BAM is
accepted too and restored to the reads as sequenced: a record on the reverse strand (flag 0x10)
stores the reverse complement of its read, so its sequence is reverse-complemented back;
secondary (0x100) and supplementary (0x800) alignments repeat a read that has its primary record
and are skipped (their sequence is often absent or hard-clipped).

pysam is imported only when a BAM file is read; without it, one line says how to install it.
"""

from __future__ import annotations

import gzip
import os
from typing import Iterator

from ..errors import UserError

__all__ = ["BAM_INSTALL_HINT", "BamError", "is_bam", "scan_bam", "read_bam", "mate_of_flag"]

BAM_INSTALL_HINT = 'reading BAM needs pysam: pip install "virnucdist[bam]" (or pip install pysam)'
_REVERSE, _SECONDARY, _SUPPLEMENTARY, _PAIRED, _FIRST, _SECOND = 0x10, 0x100, 0x800, 0x1, 0x40, 0x80
_COMPLEMENT = str.maketrans("ACGTUNacgtunRYKMSWBDHVrykmswbdhv", "TGCAANtgcaanYRMKSWVHDByrmkswvhdb")


class BamError(UserError):
    """A BAM file that cannot be read (one line: file, record, what to do)."""


def is_bam(path: str | os.PathLike) -> bool:
    """True when ``path`` is BGZF/gzip whose decompressed content starts with ``BAM\\1``."""
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                return False
        with gzip.open(path, "rb") as fh:
            return fh.read(4) == b"BAM\x01"
    except (OSError, EOFError):
        return False


def _pysam():
    try:
        import pysam  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise BamError(BAM_INSTALL_HINT) from None
    return pysam


def mate_of_flag(flag: int) -> int:
    """1 or 2 for the first or second read of a pair (0x40 / 0x80), 0 for a single read."""
    if flag & _FIRST and not flag & _SECOND:
        return 1
    if flag & _SECOND and not flag & _FIRST:
        return 2
    return 0


def _sequence(rec) -> str:
    seq = rec.query_sequence or ""
    return seq.translate(_COMPLEMENT)[::-1] if rec.flag & _REVERSE else seq


def _open(pysam, path):
    try:
        return pysam.AlignmentFile(str(path), "rb", check_sq=False)
    except (OSError, ValueError) as e:
        raise BamError(f"{path}: cannot be read as BAM ({e}); check the file (samtools quickcheck)") from None


def scan_bam(path: str | os.PathLike) -> Iterator[tuple[str, str, int, int]]:
    """``(name, seq, voffset, mate)`` for each primary record, in file order (see the module docstring)."""
    pysam = _pysam()
    with _open(pysam, path) as f:
        n = 0
        while True:
            voffset = f.tell()
            try:
                rec = next(f)
            except StopIteration:
                return
            except (OSError, ValueError) as e:
                raise BamError(f"{path}: record {n + 1} cannot be read ({e}); the file is truncated or "
                               f"corrupt (samtools quickcheck {path})") from None
            n += 1
            if rec.flag & (_SECONDARY | _SUPPLEMENTARY):
                continue
            yield rec.query_name, _sequence(rec), int(voffset), mate_of_flag(rec.flag)


_HANDLES: dict[tuple[int, str], object] = {}  # per process (DataLoader workers open their own)


def read_bam(path: str | os.PathLike, voffset: int) -> str:
    """The sequence of the record at ``voffset`` (as sequenced: reverse-strand records restored)."""
    key = (os.getpid(), os.fspath(path))
    f = _HANDLES.get(key)
    if f is None:
        f = _HANDLES[key] = _open(_pysam(), path)
    f.seek(int(voffset))
    try:
        rec = next(f)
    except (StopIteration, OSError, ValueError) as e:
        raise BamError(f"{path}: no record at offset {voffset} ({e or 'end of file'}); the file changed since "
                       f"it was indexed: run again with --overwrite") from None
    return _sequence(rec)
