"""Streaming FASTA reading, writing and validation (plain or gzip).

Record ids follow Biopython's ``record.id``: the first whitespace-separated
word of the header line; ``description`` is the whole header line without the
``>``. A sequence is the concatenation of its lines with all ASCII whitespace
removed (so CRLF files, trailing spaces and wrapped lines give the same record
as a clean single-line file). :class:`virnucdist.sharding.SequenceIndex` uses
exactly the same rules, so ``index.read(i)`` equals ``read_fasta`` record ``i``.

Gzip is recognised by its magic bytes, not by the file name.

What is validated here is the *structure*: an empty file, text that is not
FASTA, binary data (NUL bytes, undecodable UTF-8), an empty header, non-ASCII
bytes in sequence lines, a corrupt gzip stream. Each raises :class:`FastaError`
naming the file, the line and what to do. The *alphabet* (which letters a model
accepts) is the model's business; :func:`validate_letters` is the helper for it.
"""

from __future__ import annotations

import functools
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Iterable, Iterator

from .errors import UserError

__all__ = [
    "FastaRecord",
    "FastaError",
    "read_fasta",
    "write_fasta",
    "open_text",
    "open_binary",
    "is_gzip",
    "validate_letters",
    "WHITESPACE",
]

#: ASCII whitespace, exactly what ``bytes.split()`` splits on; removed from sequences.
WHITESPACE = b" \t\r\n\v\f"
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


class FastaError(UserError, ValueError):
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


def is_gzip(path: str | Path) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def open_binary(path: str | Path) -> BinaryIO:
    """Open a plain or gzip file (by magic bytes) for binary reading."""
    if is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def open_text(path: str | Path) -> IO[str]:
    """Open a plain or gzip file (by magic bytes) as UTF-8 text, universal newlines."""
    if is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8", newline=None)
    return open(path, "r", encoding="utf-8", newline=None)


def _excerpt(raw: bytes, n: int = 40) -> str:
    text = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
    return repr(text[:n] + ("..." if len(text) > n else ""))


def _not_fasta_message(raw: bytes) -> str:
    hint = ""
    if raw.startswith(b"@"):
        hint = " It looks like FASTQ; convert it to FASTA first (e.g. `seqkit fq2fa`)."
    return (
        f"expected a FASTA header line starting with '>', found {_excerpt(raw)}; "
        f"is this a FASTA file?{hint}"
    )


def _decode_error_message(err: UnicodeDecodeError) -> str:
    bad = err.object[err.start:err.start + 1]
    return (
        f"not valid UTF-8 text (byte 0x{bad.hex()} at column {err.start + 1}); "
        "this looks like a binary or corrupted file, not FASTA"
    )


def _nul_message(raw: bytes) -> str:
    col = raw.index(b"\x00") + 1
    return (
        f"binary data (NUL byte at column {col}); "
        "this is not a text FASTA file (compressed with something other than gzip? corrupted?)"
    )


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Yield records of a FASTA file (plain or gzip) in file order.

    Raises :class:`FastaError` (file, line, what to do) for: an empty file or one
    without records, a first non-blank line that is not a ``>`` header, binary
    data (NUL bytes or undecodable UTF-8), a header without an id, non-ASCII
    bytes in sequence lines, and a corrupt or truncated gzip stream.
    A record with an empty sequence is yielded with ``seq == ""``.
    """
    header: str | None = None
    rid = ""
    chunks: list[bytes] = []
    lineno = 0
    nrecords = 0
    try:
        fh = open_binary(path)
    except IsADirectoryError:
        raise FastaError(path, None, "is a directory, not a FASTA file") from None
    except FileNotFoundError:
        raise FastaError(path, None, "file not found; check the path") from None
    with fh:
        lines = iter(fh)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
                raise FastaError(
                    path, lineno + 1,
                    f"corrupt or truncated gzip data ({err}); re-download or recompress the file",
                ) from None
            lineno += 1
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if b"\x00" in raw:
                raise FastaError(path, lineno, _nul_message(raw))
            if raw.startswith(b">"):
                if header is not None:
                    yield FastaRecord(rid, header, b"".join(chunks).decode("ascii"))
                    nrecords += 1
                try:
                    header = raw[1:].rstrip(b"\r\n").decode("utf-8")
                except UnicodeDecodeError as err:
                    raise FastaError(path, lineno, _decode_error_message(err)) from None
                words = header.encode("utf-8").split(None, 1)
                if not words:
                    raise FastaError(
                        path, lineno,
                        "empty header: '>' must be followed by a sequence id (e.g. '>read_1')",
                    )
                rid = words[0].decode("utf-8")
                chunks = []
                continue
            seq = raw.translate(None, WHITESPACE)
            if not seq:
                continue
            if not seq.isascii():
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise FastaError(path, lineno, _decode_error_message(err)) from None
                raise FastaError(
                    path, lineno,
                    f"non-ASCII character in sequence line {_excerpt(raw)}; "
                    "sequences must be plain ASCII letters",
                )
            if header is None:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise FastaError(path, lineno, _decode_error_message(err)) from None
                raise FastaError(path, lineno, _not_fasta_message(raw))
            chunks.append(seq)
    if header is not None:
        yield FastaRecord(rid, header, b"".join(chunks).decode("ascii"))
        nrecords += 1
    if nrecords == 0:
        what = "the file is empty" if lineno == 0 else "the file contains only blank lines"
        raise FastaError(
            path, max(lineno, 1),
            f"no FASTA records ({what}); expected '>id' header lines each followed by sequence lines",
        )


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


@functools.lru_cache(maxsize=64)
def _as_set(alphabet: str | frozenset) -> frozenset:
    return frozenset(alphabet)


def validate_letters(seq: str, alphabet: str | frozenset) -> str | None:
    """Return the first letter of ``seq`` not in ``alphabet`` (case-sensitive), or None.

    Fast when the sequence is valid (one set build); the caller words the error
    (it knows the model, e.g. "ESM-2 accepts ACDEFGHIKLMNPQRSTVWYXBZUO").
    """
    allowed = _as_set(alphabet)
    if set(seq) <= allowed:
        return None
    for ch in seq:
        if ch not in allowed:
            return ch
    return None  # unreachable
