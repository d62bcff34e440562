"""Streaming FASTA reading and writing (plain or gzip).

Record ids follow Biopython's ``record.id``: the first whitespace-separated
word of the header line.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

__all__ = ["FastaRecord", "FastaError", "read_fasta", "write_fasta", "open_text"]


class FastaError(ValueError):
    """A user-facing FASTA problem: names the file, the line and what to do."""

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


def open_text(path: str | Path) -> IO[str]:
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", newline=None)
    return open(path, "r", newline=None)


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Yield records of a FASTA file in file order."""
    header: str | None = None
    chunks: list[str] = []
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line.startswith(">"):
                if header is not None:
                    yield _record(header, chunks)
                header, chunks = line[1:], []
            elif header is None:
                if line.strip():
                    raise FastaError(path, lineno, "sequence data before the first '>' header; is this a FASTA file?")
            else:
                chunks.append(line.strip())
    if header is not None:
        yield _record(header, chunks)


def _record(header: str, chunks: list[str]) -> FastaRecord:
    words = header.split(None, 1)
    rid = words[0] if words else ""
    return FastaRecord(rid, header, "".join(chunks))


def write_fasta(path: str | Path, records: Iterable[tuple[str, str]], width: int | None = None) -> int:
    """Write ``(id, seq)`` pairs; one line per sequence unless ``width`` is given. Returns the count."""
    n = 0
    with open(path, "w") as fh:
        for rid, seq in records:
            fh.write(f">{rid}\n")
            if width:
                for i in range(0, len(seq), width):
                    fh.write(seq[i:i + width] + "\n")
            else:
                fh.write(seq + "\n")
            n += 1
    return n
