"""Stage 2 of VirNucPro: six-frame translation of chunks, keeping stop-free frames.

Rules (quirks included) in ``shared/spec/virnucpro-stages.md`` section 2:

- the chunk is upper-cased; the reverse complement swaps A<->T and C<->G only
  (N and other IUPAC letters are kept), then reverses;
- NCBI table 1; codons with any letter outside ACGT are silently DROPPED;
- a frame is kept only if its protein is non-empty and has no ``*`` at all;
- the nucleotide record of a kept frame is ``src[o : o + 3*P + 1]`` (one base too
  many: the original's off-by-one), P being the protein length;
- IDs are ``chunk_id + F1|F2|F3|R1|R2|R3``, emitted in that order.

The hot path is vectorised with numpy (one codon-index array per strand, a
64-entry lookup table), so millions of chunks translate quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from virnucdist.vnp.chunk import RecordLike, id_and_seq

__all__ = ["CODON_TABLE", "Frame", "FRAME_NAMES", "reverse_complement", "six_frame", "translate_records"]

_BASES = "TCAG"
_AA_TCAG = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
#: NCBI translation table 1 (the standard code), 64 codons, stops as ``*``.
CODON_TABLE: dict[str, str] = {
    a + b + c: _AA_TCAG[16 * i + 4 * j + k]
    for i, a in enumerate(_BASES)
    for j, b in enumerate(_BASES)
    for k, c in enumerate(_BASES)
}

#: Frame suffixes in output order: forward offsets 0/1/2, then reverse complement 0/1/2.
FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")

_COMPLEMENT = str.maketrans("ACGT", "TGCA")

# Base codes A=0 C=1 G=2 T=3, anything else 4 (invalid). Complement of code v is 3-v.
_CODE = np.full(256, 4, dtype=np.uint8)
for _v, _b in enumerate("ACGT"):
    _CODE[ord(_b)] = _v
# Amino-acid byte for codon index 16*b1 + 4*b2 + b3 (ACGT order).
_AA_BY_INDEX = np.array(
    [ord(CODON_TABLE[a + b + c]) for a in "ACGT" for b in "ACGT" for c in "ACGT"], dtype=np.uint8
)
_STOP = ord("*")


@dataclass(frozen=True)
class Frame:
    """A kept reading frame: record ID, its nucleotide record and its protein."""

    id: str
    nucleotide: str
    protein: str


def reverse_complement(seq: str) -> str:
    """Reverse complement swapping only A/T and C/G (expects upper case); others kept."""
    return seq.translate(_COMPLEMENT)[::-1]


def _codon_index(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codon index and validity for every start position i with i < len-2."""
    c0, c1, c2 = codes[:-2], codes[1:-1], codes[2:]
    valid = (c0 < 4) & (c1 < 4) & (c2 < 4)
    idx = (c0.astype(np.intp) << 4) | (c1.astype(np.intp) << 2) | c2
    return idx, valid


def _strand_proteins(idx: np.ndarray, valid: np.ndarray) -> list[str | None]:
    """Protein of each offset 0/1/2, or None when the frame is dropped."""
    out: list[str | None] = []
    for o in range(3):
        sel = idx[o::3][valid[o::3]]
        if sel.size == 0:
            out.append(None)
            continue
        aa = _AA_BY_INDEX[sel]
        if (aa == _STOP).any():
            out.append(None)
            continue
        out.append(aa.tobytes().decode("ascii"))
    return out


def six_frame(chunk_id: str, seq: str) -> list[Frame]:
    """Kept frames of one chunk, in F1, F2, F3, R1, R2, R3 order (see module doc)."""
    fwd = seq.upper()
    if len(fwd) < 3:
        return []
    raw = np.frombuffer(fwd.encode("ascii", "replace"), dtype=np.uint8)
    codes = _CODE[raw]
    # Reverse strand codes straight from the forward ones: complement is 3-v, invalid stays 4.
    rc_codes = np.where(codes < 4, 3 - codes, codes)[::-1]
    frames: list[Frame] = []
    rev: str | None = None
    for strand, strand_codes in ((0, codes), (1, rc_codes)):
        proteins = _strand_proteins(*_codon_index(strand_codes))
        for o, protein in enumerate(proteins):
            if protein is None:
                continue
            if strand == 0:
                src = fwd
            else:
                if rev is None:
                    rev = reverse_complement(fwd)
                src = rev
            frames.append(
                Frame(chunk_id + FRAME_NAMES[3 * strand + o], src[o : o + 3 * len(protein) + 1], protein)
            )
    return frames


def translate_records(records: Iterable[RecordLike]) -> Iterator[Frame]:
    """Kept frames of every chunk, in chunk order then frame order."""
    for rec in records:
        cid, seq = id_and_seq(rec)
        yield from six_frame(cid, seq)
