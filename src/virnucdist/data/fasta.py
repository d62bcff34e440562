"""FASTA/FASTQ records: reading (through the index's byte scanner), writing, and errors.

There is one parser: :mod:`virnucdist.data.index` scans files in binary blocks
(FASTA or FASTQ, plain or gzip, detected from the content); its :func:`read_fasta`
iterates over the records it finds, so the streaming reader and the index agree on
every record and on every error message.

Record ids follow Biopython's ``record.id``: the first whitespace-separated word of
the header line; ``description`` is the whole header line without the ``>`` (or
FASTQ's ``@``). A sequence is the concatenation of its lines with all ASCII
whitespace removed (so CRLF files, trailing spaces and wrapped lines give the same
record as a clean single-line file). FASTQ qualities are validated (one per letter)
and otherwise ignored.

What is validated is the *structure*: an empty file, text that is neither FASTA nor
FASTQ, binary data (NUL bytes, undecodable UTF-8), an empty header, non-ASCII bytes
in sequence lines, a corrupt gzip stream, and for FASTQ: 4-line records, the ``+``
line, as many qualities as letters, a truncated last record. Each raises
:class:`FastaError` naming the file, the line and what to do. Which letters a model
accepts is the model's business (:mod:`virnucdist.data.alphabet` says what a file holds).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable

from ..errors import UserError

__all__ = ["FastaRecord", "FastaError", "write_fasta", "is_gzip", "WHITESPACE"]

#: ASCII whitespace, exactly what ``bytes.split()`` splits on; removed from sequences.
WHITESPACE = b" \t\r\n\v\f"
_GZIP_MAGIC = b"\x1f\x8b"


class FastaError(UserError, ValueError):
    """A user-facing FASTA/FASTQ problem: names the file, the line and what to do."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True)
class FastaRecord:
    id: str
    description: str
    seq: str


def is_gzip(path: str | Path) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def write_fasta(path: str | Path, records: Iterable[tuple[str, str]], width: int | None = None) -> int:
    """Write ``(id, seq)`` pairs; one line per sequence unless ``width`` is given.

    A path ending in ``.gz`` is written gzip-compressed. Returns the count.
    """
    n = 0
    if str(path).endswith(".gz"):
        fh: IO[str] = io.TextIOWrapper(gzip.open(path, "wb"), encoding="utf-8", newline="\n")
    else:
        fh = open(path, "w", encoding="utf-8", newline="\n")
    with fh:
        for rid, seq in records:
            fh.write(f">{rid}\n")
            if width:
                for i in range(0, len(seq), width):
                    fh.write(seq[i:i + width] + "\n")
            else:
                fh.write(seq + "\n")
            n += 1
    return n
