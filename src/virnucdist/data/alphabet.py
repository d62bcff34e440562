"""What a file holds: DNA, RNA or protein, from its letter counts.

:class:`virnucdist.sharding.SequenceIndex` counts the bytes of every file's sequence
lines while indexing (``letter_counts``, ``file_letter_counts``); :func:`molecule_of`
turns such a 256-bin histogram into a verdict and :func:`check_molecule` refuses,
in one line, an input that is clearly the wrong molecule for a model.

Proteins hold A, C, G, T and N too (about a quarter of their residues), so the
verdict looks at the share of nucleotide letters (A, C, G, T, U, N, any case): a
nucleic-acid file is almost all of them, a protein file mostly other letters.

Thresholds (fractions of all sequence characters):

* ``dna`` / ``rna``: nucleotide letters >= 90%; ``rna`` when U outnumbers T.
* ``protein``: otherwise, when amino-acid letters other than A/C/G/T/U/N are >= 30%
  (typical proteomes: ~26% nucleotide letters, ~74% others; a file of half DNA and
  half protein, by letters, is protein too: 37% of its letters are not nucleotides).
* ``unknown``: anything else (no letters; digits, gaps or symbols; nucleotide letters
  between 70% and 90% with few amino-acid letters); :func:`check_molecule` never
  refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

__all__ = ["Molecule", "WrongMoleculeError", "molecule_of", "check_molecule", "NUCLEOTIDE_MIN", "PROTEIN_MIN"]

#: share of nucleotide letters (ACGTUN) from which a file is DNA or RNA
NUCLEOTIDE_MIN = 0.90
#: share of amino-acid letters other than ACGTUN from which a (not nucleotide) file is protein
PROTEIN_MIN = 0.30

_NUC = b"ACGTUN"
#: the 20 standard amino acids plus B, Z, X, J, O, U; minus the nucleotide letters
_AA_ONLY = bytes(sorted(set(b"ACDEFGHIKLMNPQRSTVWYBZXJOU") - set(_NUC)))
_WHITESPACE = b" \t\r\n\v\f"


class WrongMoleculeError(UserError):
    """The input is not the molecule the model reads (DNA given to ESM-2, protein to DNABERT-S)."""


@dataclass(frozen=True)
class Molecule:
    """What a letter histogram says; fractions are of all sequence characters."""

    kind: str                 # 'dna' | 'rna' | 'protein' | 'unknown'
    letters: int              # sequence characters counted (whitespace excluded)
    nucleotide: float         # share of A, C, G, T, U, N (any case)
    u: float                  # share of U
    t: float                  # share of T
    protein_only: float       # share of amino-acid letters other than A, C, G, T, U, N

    def describe(self) -> str:
        """E.g. ``looks like DNA: 99.8% of 45,000 letters are A/C/G/T/N``."""
        n = f"{self.letters:,} letters"
        if self.kind == "dna":
            return f"looks like DNA: {_pct(self.nucleotide)} of {n} are A/C/G/T/N"
        if self.kind == "rna":
            return f"looks like RNA: {_pct(self.nucleotide)} of {n} are A/C/G/U/N ({_pct(self.u)} U)"
        if self.kind == "protein":
            return (f"looks like protein: {_pct(self.protein_only)} of {n} are amino-acid letters "
                    "other than A/C/G/T/U/N")
        if not self.letters:
            return "holds no sequence letters"
        return (f"is neither clearly nucleotide nor protein: {_pct(self.nucleotide)} of {n} are "
                f"A/C/G/T/U/N, {_pct(self.protein_only)} other amino-acid letters")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def molecule_of(counts: np.ndarray) -> Molecule:
    """The verdict for a 256-bin byte histogram of sequence characters (case folded here)."""
    c = np.asarray(counts, dtype=np.int64).reshape(256).copy()
    c[list(_WHITESPACE)] = 0
    folded = c.copy()
    folded[ord("A"):ord("Z") + 1] += c[ord("a"):ord("z") + 1]
    total = int(c.sum())
    if total == 0:
        return Molecule("unknown", 0, 0.0, 0.0, 0.0, 0.0)
    nuc = int(folded[list(_NUC)].sum()) / total
    u = int(folded[ord("U")]) / total
    t = int(folded[ord("T")]) / total
    aa = int(folded[list(_AA_ONLY)].sum()) / total
    if nuc >= NUCLEOTIDE_MIN:
        kind = "rna" if u > t else "dna"
    elif aa >= PROTEIN_MIN:
        kind = "protein"
    else:
        kind = "unknown"
    return Molecule(kind, total, nuc, u, t, aa)


_ACCEPTS = {"dna": {"dna"}, "rna": {"rna"}, "nucleotide": {"dna", "rna"}, "protein": {"protein"}}
_WORDS = {"dna": "DNA", "rna": "RNA", "nucleotide": "nucleotide sequences (DNA or RNA)", "protein": "protein"}


def check_molecule(index_or_counts, expected: str, model_name: str, flag: str) -> Molecule:
    """Raise :class:`WrongMoleculeError` (one line) when the input is clearly not ``expected``.

    ``index_or_counts``: a :class:`~virnucdist.sharding.SequenceIndex` (each file is
    checked and the message names the file) or a 256-bin histogram. ``expected``:
    ``'dna'``, ``'rna'``, ``'nucleotide'`` (DNA or RNA) or ``'protein'``. An
    ``unknown`` verdict is never refused. ``flag`` is the option that skips the check
    (named in the message). Returns the verdict over all the input.
    """
    if expected not in _ACCEPTS:
        raise ValueError(f"expected must be one of {sorted(_ACCEPTS)}, not {expected!r}")
    per_file = getattr(index_or_counts, "file_letter_counts", None)
    if per_file is not None:
        named = list(zip(index_or_counts.sources, per_file))
        total = per_file.sum(axis=0)
    else:
        total = np.asarray(index_or_counts)
        named = [("the input", total)]
    for name, counts in named:
        mol = molecule_of(counts)
        if mol.kind in ("dna", "rna", "protein") and mol.kind not in _ACCEPTS[expected]:
            raise WrongMoleculeError(
                f"{name} {mol.describe()}, but {model_name} reads {_WORDS[expected]}; "
                f"give it the right input, or pass {flag} to run it anyway")
    return molecule_of(total)
