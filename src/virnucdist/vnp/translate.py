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

import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from virnucdist.vnp.chunk import RecordLike, id_and_seq

__all__ = ["CODON_TABLE", "Frame", "FRAME_NAMES", "reverse_complement", "six_frame", "translate_chunks",
           "translate_records"]

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
# Upper-case A<->T, C<->G on bytes (reverse_complement's swap); every other byte kept.
_COMPLEMENT_BYTES = np.arange(256, dtype=np.uint8)
for _a, _b in ("AT", "TA", "CG", "GC"):
    _COMPLEMENT_BYTES[ord(_a)] = ord(_b)


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


def translate_chunks(chunks: Sequence[tuple[str, str]]) -> list[Frame]:
    """:func:`six_frame` of every ``(chunk_id, seq)``, concatenated in order, computed in batches:
    chunks of one length written in ACGT (either case) are translated together as a matrix (every
    codon valid: a frame is dropped only for a stop, its protein and nucleotide record have fixed
    widths); any other chunk (other letters, non-ASCII) by :func:`six_frame` itself."""
    frames: list[list[Frame] | None] = [None] * len(chunks)
    by_len: dict[int, list[int]] = {}
    for j, (cid, seq) in enumerate(chunks):
        if seq.isascii() and len(seq) >= 3:
            by_len.setdefault(len(seq), []).append(j)
        else:
            frames[j] = six_frame(cid, seq)
    for length, js in by_len.items():
        raw = np.frombuffer("".join([chunks[j][1] for j in js]).upper().encode("ascii"), dtype=np.uint8)
        raw = raw.reshape(len(js), length)
        codes = _CODE[raw]
        ok = (codes < 4).all(axis=1)
        for j in np.asarray(js)[~ok].tolist():
            frames[j] = six_frame(*chunks[j])
        good = [j for j, k in zip(js, ok.tolist()) if k]
        if not good:
            continue
        codes, raw = codes[ok], raw[ok]
        strands = ((codes, raw), ((3 - codes)[:, ::-1], _COMPLEMENT_BYTES[raw][:, ::-1]))
        kept = np.zeros((len(good), 6), dtype=bool)
        prot, nuc = [], []  # per frame F1, F2, F3, R1, R2, R3: the kept rows' texts
        for s, (c, src) in enumerate(strands):
            for o in range(3):
                n_cod = (length - o) // 3
                cod = c[:, o:o + 3 * n_cod].reshape(len(good), n_cod, 3)
                aa = _AA_BY_INDEX[(cod[..., 0] << 4) | (cod[..., 1] << 2) | cod[..., 2]]  # uint8 codon index
                keep = kept[:, 3 * s + o] = ~(aa == _STOP).any(axis=1) & (n_cod > 0)  # an empty protein: dropped
                width = min(length - o, 3 * n_cod + 1)  # the original's one base too many, clipped
                prot.append(_rows_text(aa[keep]))
                nuc.append(_rows_text(src[keep, o:o + width]))
        rank = (np.cumsum(kept, axis=0) - 1)  # a kept frame's place among its frame's kept rows
        at = np.flatnonzero(kept.ravel())
        rows, fr = at // 6, at % 6
        ids = [chunks[j][0] for j in good]
        made = [Frame(ids[r] + FRAME_NAMES[f], nuc[f][k], prot[f][k])
                for r, f, k in zip(rows.tolist(), fr.tolist(), rank[rows, fr].tolist())]
        ends = np.searchsorted(rows, np.arange(1, len(good) + 1)).tolist()
        start = 0
        for j, end in zip(good, ends):
            frames[j] = made[start:end]
            start = end
    return [fr for per_chunk in frames for fr in per_chunk]


def _rows_text(m: np.ndarray) -> list[str]:
    """Each row of an ASCII byte matrix as a str."""
    width = m.shape[1]
    text = np.ascontiguousarray(m).tobytes().decode("ascii")
    return [text[i:i + width] for i in range(0, len(text), width)] if width else [""] * len(m)


def translate_records(records: Iterable[RecordLike], batch: int = 4096) -> Iterator[Frame]:
    """Kept frames of every chunk, in chunk order then frame order (:func:`translate_chunks`, ``batch``
    chunks at a time)."""
    it = iter(records)
    while True:
        chunks = [id_and_seq(rec) for rec in itertools.islice(it, batch)]
        if not chunks:
            return
        yield from translate_chunks(chunks)
