"""Coding sequences of GenBank flat files (``.gbff``/``.gb``, plain or gzip): VirNucPro's training frames.

VirNucPro trained on the frame of each chunk that its GenBank protein annotation names. The
cheap equivalent here: :func:`iter_cds` reads every ``CDS`` feature of a GenBank file (location
with ``join``/``complement``/``order``, ``<``/``>`` partial marks, ``/codon_start``) and yields its
nucleotides in coding orientation, the terminal stop codon removed; ``virnucdist cds`` writes them
as FASTA. Trained with ``--frames annotated``, each chunk or window of such a sequence keeps only
the forward frame that reads the CDS's own codons (``F1`` when the chunk starts on a codon
boundary, ``F2``/``F3`` one/two bases after one): VirNucPro's frame choice.

Only what this needs is parsed: ``LOCUS`` names, ``CDS`` locations and the ``/codon_start``,
``/protein_id`` and ``/pseudo`` qualifiers, and the ``ORIGIN`` sequence. Features on other
records (``ACC:1..300``) and pseudogenes are skipped.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Iterator

from ..errors import UserError

__all__ = ["iter_cds", "annotated_frame", "GenBankError", "STOPS"]

STOPS = ("TAA", "TAG", "TGA")
_COMP = str.maketrans("ACGTNacgtn", "TGCANtgcan")
_SPAN = re.compile(r"^(\d+)(?:\.\.(\d+))?$")


class GenBankError(UserError):
    """A GenBank file that cannot be read as such."""


def annotated_frame(offset: int) -> str:
    """The forward frame name reading the codons of a chunk that starts ``offset`` bases into a CDS."""
    return f"F{(-offset) % 3 + 1}"


def _open(path: Path):
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt") if gz else open(path)


def _segments(loc: str, where: str) -> list[tuple[int, int, bool]] | None:
    """``[(start0, end, reverse)]`` of a location string in transcription order; None if remote."""
    loc = loc.replace(" ", "").replace("<", "").replace(">", "")
    if ":" in loc:
        return None

    def parse(s: str, rev: bool) -> list[tuple[int, int, bool]]:
        if s.startswith("complement(") and s.endswith(")"):
            return [(a, b, not r) for a, b, r in reversed(parse(s[len("complement("):-1], rev))]
        for op in ("join(", "order("):
            if s.startswith(op) and s.endswith(")"):
                parts, depth, cur = [], 0, ""
                for ch in s[len(op):-1]:
                    depth += (ch == "(") - (ch == ")")
                    if ch == "," and depth == 0:
                        parts.append(cur)
                        cur = ""
                    else:
                        cur += ch
                parts.append(cur)
                return [seg for p in parts for seg in parse(p, rev)]
        m = _SPAN.match(s)
        if not m:
            raise GenBankError(f"{where}: CDS location {loc!r} is not one this reader understands")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        return [(a - 1, b, rev)]

    return parse(loc, False)


def _records(path: Path) -> Iterator[tuple[str, list[tuple[str, dict, int]], str]]:
    """``(locus, [(location, qualifiers, line)], sequence)`` per record."""
    locus, feats, seq, section, line_no = None, [], [], None, 0
    cur: list | None = None
    with _open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if line.startswith("LOCUS"):
                parts = line.split()
                locus, feats, seq, section, cur = (parts[1] if len(parts) > 1 else f"record{line_no}"), [], [], None, None
            elif line.startswith("FEATURES"):
                section = "features"
            elif line.startswith("ORIGIN"):
                section = "origin"
            elif line.startswith("//"):
                if locus is None:
                    raise GenBankError(f"{path}, line {line_no}: '//' without a LOCUS line; is this a GenBank file?")
                yield locus, feats, "".join(seq).upper()
                locus, section, cur = None, None, None
            elif section == "features":
                if not line.startswith(" "):
                    section = None
                    continue
                key = line[5:21].strip()
                if key:
                    cur = [key, line[21:].strip(), {}, line_no, None]
                    if key == "CDS":
                        feats.append(cur)
                elif cur is not None:
                    text = line[21:].strip()
                    if text.startswith("/"):
                        name, _, value = text[1:].partition("=")
                        cur[2][name] = value.strip('"')
                        cur[4] = name
                    elif cur[4] is None:  # the location continues
                        cur[1] += text
            elif section == "origin":
                seq.append("".join(ch for ch in line if ch.isalpha()))
    if locus is not None:
        raise GenBankError(f"{path}: the last record ({locus}) has no closing '//' line; the file is cut short")
    if line_no == 0:
        raise GenBankError(f"{path}: empty file; expected GenBank records (LOCUS ... //)")


def iter_cds(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(id, coding nucleotides)`` of every CDS of a GenBank file, coding orientation, stop removed.

    ids: ``{locus}_{protein_id}`` (or ``{locus}_cds{k}``)."""
    path = Path(path)
    n_records = 0
    for locus, feats, seq in _records(path):
        n_records += 1
        for k, (_, loc, quals, line, _) in enumerate(feats, 1):
            if "pseudo" in quals or "pseudogene" in quals:
                continue
            segs = _segments(loc, f"{path}, line {line}")
            if not segs:
                continue
            nt = "".join(seq[a:b] if not rev else seq[a:b].translate(_COMP)[::-1] for a, b, rev in segs)
            nt = nt[int(quals.get("codon_start", "1") or 1) - 1:]
            nt = nt[: len(nt) - len(nt) % 3]
            if nt[-3:] in STOPS:
                nt = nt[:-3]
            if nt:
                yield f"{locus}_{quals.get('protein_id') or f'cds{k}'}", nt
    if n_records == 0:
        raise GenBankError(f"{path}: no GenBank records (LOCUS ... //); give a .gbff/.gb file")
