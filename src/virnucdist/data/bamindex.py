"""BAM files in the sequence index, through :mod:`virnucdist.data.bam` (pysam, imported only here).

A BAM input (told by its content) is scanned with :func:`~virnucdist.data.bam.scan_bam`: one
row per primary record, ``offset`` its BGZF virtual offset (read back with
:func:`~virnucdist.data.bam.read_bam`), ``nbytes == length`` its letters, ``header_line`` its
record number (messages say "record"), the id the read name with ``/1`` or ``/2`` for the first
or second read of a pair (flags 0x40/0x80; a name that already ends so is kept as it is) and the
mate number kept. The fingerprint digest is
a sha256 over the names and sequences in file order.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from .scan import HASH_BYTES, _FileScan
from .store import encode_ids

__all__ = ["scan_bam_file"]


def scan_bam_file(path: str, progress: Callable[[int], None] | None, spool) -> tuple[_FileScan, np.ndarray]:
    """``(scan, mates)`` of a BAM file (mates: int8 per row, 0 single, 1 or 2); columns into ``spool``."""
    from .bam import scan_bam    # pysam only when a BAM is given

    sha = hashlib.sha256()
    ids, off, length, mates, digests = [], [], [], [], []
    counts = np.zeros(256, dtype=np.int64)
    pending = bytearray()
    b2 = hashlib.blake2b
    for name, seq, voffset, mate in scan_bam(path):
        s = seq.encode("ascii")
        ids.append(f"{name}/{mate}" if mate and not name.endswith(f"/{mate}") else name)  # x/1 kept as it is
        off.append(voffset)
        length.append(len(s))
        mates.append(mate)
        digests.append(b2(s.upper(), digest_size=HASH_BYTES).digest())
        sha.update(b"%s\t%s\n" % (name.encode("utf-8"), s))
        pending += s
        if len(pending) >= 1 << 22:
            counts += np.bincount(np.frombuffer(bytes(pending), np.uint8), minlength=256)
            if progress is not None:
                progress(len(pending))
            pending.clear()
    if pending:
        counts += np.bincount(np.frombuffer(bytes(pending), np.uint8), minlength=256)
        if progress is not None:
            progress(len(pending))
    n = len(ids)
    length_a = np.asarray(length, dtype=np.int64).reshape(n)
    hashes = np.frombuffer(b"".join(digests), dtype="<u8").reshape(-1, 2).copy()
    spool.add("offset", np.asarray(off, dtype=np.int64).reshape(n))
    spool.add("nbytes", length_a)
    spool.add("length", length_a)
    spool.add("header_line", np.arange(1, n + 1, dtype=np.int64))
    spool.add("content_hash", hashes)
    blob, id_off = encode_ids(ids)
    spool.add_ids(blob, np.diff(id_off))
    spool.close()
    scan = _FileScan("bam", [(spool, 0, 0)], counts, sha.hexdigest(), int(length_a.sum()))
    return scan, np.asarray(mates, dtype=np.int8).reshape(n)
