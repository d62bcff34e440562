"""Test data for ``virnucdist.train``: two synthetic sequence sources of different composition, and a
tiny ESM-2 (fair-esm file of a small architecture) so that a CPU run takes seconds.

Imported by tests/unit/test_train.py, tests/multigpu/test_torchrun_train.py and benchmarks/train.py
(``--smoke``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from virnucdist.data.fasta import write_fasta
from virnucdist.models.esm2 import ESM2Config
from virnucdist.models.random_init import DNABERT_S_TINY, random_dnabert_s, random_esm2
from _formats import save_fair_esm_checkpoint, save_hf_dir
from virnucdist.vnp.translate import CODON_TABLE

SENSE = sorted(c for c, aa in CODON_TABLE.items() if aa != "*")
_GC = np.array([sum(ch in "GC" for ch in c) for c in SENSE], dtype=np.float64)


def codon_weights(bias: float) -> np.ndarray:
    """Codon usage leaning to GC-rich (bias > 0) or AT-rich (bias < 0) sense codons."""
    w = np.exp(bias * _GC)
    return w / w.sum()


def genomes(n: int, length: int, bias: float, prefix: str, seed: int) -> list[tuple[str, str]]:
    """``n`` 'genomes' of stop-free codons drawn with :func:`codon_weights` (frame 1 is always kept)."""
    rng = np.random.default_rng(seed)
    p = codon_weights(bias)
    return [(f"{prefix}{i}", "".join(SENSE[k] for k in rng.choice(len(SENSE), size=length // 3, p=p)))
            for i in range(n)]


def two_sources(d: Path, n: int = 12, length: int = 600, seed: int = 0) -> tuple[Path, Path]:
    """viral.fa (GC-leaning codon usage) and other.fa (AT-leaning), the same number of genomes."""
    viral, other = d / "viral.fa", d / "other.fa"
    write_fasta(viral, genomes(n, length, 0.6, "vir", seed), width=70)
    write_fasta(other, genomes(n, length, -0.6, "oth", seed + 1), width=70)
    return viral, other


def tiny_models(d: Path, seed: int = 0) -> tuple[Path, Path]:
    """A 2-layer, 64-wide ESM-2 (fair-esm .pt) and DNABERT-S-tiny (HF directory), seeded random weights."""
    cfg = ESM2Config(2, 64, 4)
    esm = save_fair_esm_checkpoint(random_esm2(cfg, seed, "cpu", torch.float32), d / "esm2_tiny.pt", cfg)
    dna, _ = random_dnabert_s(seed, config=DNABERT_S_TINY)
    return esm, save_hf_dir(dna, d / "dnabert_tiny")
