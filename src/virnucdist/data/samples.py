"""Sample sheets: every sample of a sequencing run in one launch (``--samples SHEET.tsv``).

A sheet is tab-separated, one sample a line: the sample's name, then one file (single-end reads,
or interleaved pairs with ``--interleaved``) or the two files of a pair (R1, R2). Blank lines and
lines starting with ``#`` are skipped; a first line whose file columns name no existing file
(none ending like a reads file: .fq, .fastq, .fa, .gz, .bam, ..., nor holding a ``.`` or ``/``) is a header. Relative paths are taken from the sheet's own folder.

Names become output folders (``OUTDIR/<sample>/``): letters, digits, ``.``, ``_`` and ``-``,
starting with a letter or digit, at most 100 characters, unique (ignoring case, for
case-insensitive file systems), and none of the run directory's own names (``plan``, ``index``, ``index.tmp*``, ...). A file may belong to
one sample only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

__all__ = ["Sample", "SampleSheetError", "read_sheet", "RESERVED_NAMES"]

_SEQ_FILE = re.compile(r"\.(fa|fasta|fna|fq|fastq|bam|gz|bgz|txt)$", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: names of the run directory's own files and folders (a sample folder must not shadow them)
RESERVED_NAMES = frozenset({"shards", "logs", "inputs", "index", "index.npz", "run.json", "run_report.json",
                            "report.html", "samples.tsv", "plan"})
#: names the run removes as its own temporary files (``index.tmp*``, ``index.old*``, ``index.npz.tmp*``)
_RESERVED_PREFIX = re.compile(r"index\.(tmp|old|npz\.tmp)", re.IGNORECASE)


class SampleSheetError(UserError):
    """A sample sheet that cannot be used (one line: sheet, line, sample, what to do)."""


@dataclass(frozen=True)
class Sample:
    name: str
    files: tuple[str, ...]  # one file, or R1 and R2 of a pair
    line: int  # line of the sheet (for messages)

    @property
    def paired_files(self) -> bool:
        return len(self.files) == 2


def read_sheet(path: str | Path) -> list[Sample]:
    """The samples of a sheet, in sheet order (see the module docstring); raises SampleSheetError."""
    path = Path(path)
    if not path.is_file():
        raise SampleSheetError(f"sample sheet {path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SampleSheetError(f"sample sheet {path}: not UTF-8 text (byte {e.start}); save it as a "
                               f"tab-separated text file") from None
    base = path.resolve().parent
    samples: list[Sample] = []
    seen: dict[str, Sample] = {}
    owner: dict[str, Sample] = {}
    first = True
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in raw.rstrip("\r\n").split("\t")]
        while fields and not fields[-1]:
            fields.pop()
        where = f"sample sheet {path}, line {lineno}"
        if len(fields) not in (2, 3) or not all(fields):
            if first and len(fields) < 2:
                raise SampleSheetError(f"{where}: expected TAB-separated columns (sample, file[, file]), got "
                                       f"{raw.strip()[:60]!r}; separate the columns with tabs")
            raise SampleSheetError(f"{where}: expected a sample name and one or two files separated by tabs, got "
                                   f"{len(fields)} column(s)")
        files = [f if Path(f).is_absolute() else str(base / f) for f in fields[1:]]
        if first:
            first = False
            if not any(Path(f).exists() or _SEQ_FILE.search(f) or "." in f or "/" in f for f in fields[1:]):  # a header
                continue
        name = fields[0]
        reserved = name.lower() in RESERVED_NAMES or bool(_RESERVED_PREFIX.match(name))
        if not _NAME.fullmatch(name) or reserved:
            raise SampleSheetError(f"{where}: sample name {name!r} cannot be a folder name; use letters, digits, "
                                   f"'.', '_' and '-' (starting with a letter or digit, at most 100 characters"
                                   f"{', not ' + name if reserved else ''})")
        if name.lower() in seen:
            raise SampleSheetError(f"{where}: sample name {name!r} is already used on line "
                                   f"{seen[name.lower()].line}; sample names must be unique (ignoring case)")
        if len(files) == 2 and Path(files[0]).resolve() == Path(files[1]).resolve():
            raise SampleSheetError(f"{where}: sample {name!r}: {fields[1]} is given as both R1 and R2; a pair's "
                                   f"two files are different files (a single-end sample: give one file)")
        for f in files:
            if not Path(f).is_file():
                raise SampleSheetError(f"{where}: sample {name!r}: file {f} does not exist or is not a file")
            key = str(Path(f).resolve())
            if key in owner:
                raise SampleSheetError(f"{where}: sample {name!r}: file {f} is already listed for sample "
                                       f"{owner[key].name!r} (line {owner[key].line}); each file belongs to one sample")
        s = Sample(name, tuple(files), lineno)
        for f in files:
            owner[str(Path(f).resolve())] = s
        seen[name.lower()] = s
        samples.append(s)
    if not samples:
        raise SampleSheetError(f"sample sheet {path} lists no sample; one line per sample: name<TAB>R1[<TAB>R2]")
    return samples
