"""Per-rank HDF5 shards in input order, the resume scan, and the ordered read-back that finalize is made of.

Every task (embed, predict, a user's own) persists through one generic :class:`ShardWriter`.
A task describes its per-record output as a :class:`ShardSchema`: record columns (one value per
record: a pooled vector, two scores) and ragged columns (a variable number of rows per record:
per-token states, frames). A rank hands the writer one *window* at a time: the window's record
indices in ascending (input) order, and its results in :class:`Part`\\ s in whatever order the
batches were packed. The writer's thread scatters them back into input order, so each shard is a
run of ascending records, and the final merge (:class:`Results`) is a concatenation of contiguous
runs read with large sequential slices.

Shard file (one per rank and process attempt, :func:`shard_path`)::

    rows [n] i8              the records, strictly ascending
    <column> [n, *shape]     one per record column
    lengths [n] i8           ragged rows per record (when the schema has ragged columns)
    <ragged> [t, *shape]     one per ragged column, records' rows concatenated in record order
    bad_rows [b] i8, bad_reasons [b] str   records skipped (non-finite values), with why
    attrs: kind, schema (json), fingerprint (of the input), committed, committed_ragged, committed_bad

Commit protocol (one per flush): data written, ``flush``, ``fsync``; then the ``committed*``
attributes raised, ``flush``, ``fsync``. A reader trusts nothing past ``committed``, so a process
killed anywhere (or a node that loses power) leaves a shard whose committed prefix is on disk.
A shard that cannot be opened is set aside as ``*.corrupt`` and its records are redone.

Files are opened without HDF5 file locking (``locking=False``): one writer per file is guaranteed
by design, and HDF5's locks fail on many NFS and Lustre mounts. A full disk is one
:class:`DiskFullError` line and a clean close, never h5py's ``__dealloc__`` tracebacks.

Modules: ``durable`` (HDF5 files without locking, fsync, atomic rename, a full disk; the switch
``durable._FSYNC``), ``schema`` (:class:`Column`, :class:`ShardSchema`, :class:`Part`), ``shards``
(:class:`ShardWriter`, the resume scan), ``results`` (:class:`Results`: ordered read-back),
``final`` (the final ``embeddings.h5``: write, finalize, read).
"""

from __future__ import annotations

from .durable import DiskFullError, fsync_dir, fsync_file, replace_durably
from .final import (RowIds, finalize_embeddings, iter_embeddings, read_embeddings, read_token_embeddings,
                    write_embeddings_h5)
from .results import Results, Window
from .schema import STR, Column, Part, ShardSchema
from .shards import ShardScan, ShardWriter, scan_shards, shard_path

__all__ = [
    "Column", "ShardSchema", "Part", "ShardWriter", "DiskFullError", "ShardScan", "scan_shards", "Results", "Window",
    "finalize_embeddings", "write_embeddings_h5", "RowIds", "read_embeddings", "iter_embeddings", "read_token_embeddings",
    "shard_path", "fsync_dir", "fsync_file", "replace_durably", "STR",
]
