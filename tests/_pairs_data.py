"""Paired-end test data: Illumina-like FASTQ pairs (R1/R2 files, interleaved, single-end with /1 /2
ids), sample sheets, and the tiny random models predict runs with in tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from _predict_data import orf, tiny_models


def tiny() -> dict:
    """PredictConfig fields for the tests' small models of the real widths (see _predict_data.tiny_models)."""
    m = tiny_models()
    return dict(chunk_size=300, esm_model=str(m["esm"]), dnabert_model=str(m["dnabert"]),
                classifier=str(m["classifier"]), device="cpu", quiet=True)


def tiny_flags() -> list[str]:
    m = tiny_models()
    return ["--chunk-size", "300", "--esm-model", str(m["esm"]), "--dnabert-model", str(m["dnabert"]),
            "--classifier", str(m["classifier"]), "--device", "cpu"]


def make_pairs(seed: int, n: int, prefix: str = "A00123:8:H7GJK:1:1101") -> list[tuple[str, str, str]]:
    """``n`` pairs ``(id, mate1, mate2)`` of 60-150 bp (every fourth mate a stop-free ORF, so frames are kept)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mates = []
        for m in range(2):
            length = int(rng.integers(60, 151))
            mates.append(orf(rng, length // 3) if (i + m) % 4 == 0 else "".join(rng.choice(list("ACGT"), length)))
        out.append((f"{prefix}:{1000 + i}:{2000 + seed}", mates[0], mates[1]))
    return out


def _fq(rid: str, seq: str, comment: str = "") -> str:
    return f"@{rid}{' ' + comment if comment else ''}\n{seq}\n+\n{'F' * len(seq)}\n"


def write_r1_r2(base: Path, pairs, gz: bool = True) -> tuple[Path, Path]:
    """Two files of a pair, as Illumina writes them (same ids, ``1:N:0:...`` / ``2:N:0:...`` comments)."""
    paths = []
    for m in (1, 2):
        p = Path(f"{base}_R{m}.fastq" + (".gz" if gz else ""))
        text = "".join(_fq(rid, mates[m - 1], f"{m}:N:0:ATCACG") for rid, *mates in pairs)
        if gz:
            with gzip.open(p, "wt") as fh:
                fh.write(text)
        else:
            p.write_text(text)
        paths.append(p)
    return paths[0], paths[1]


def write_interleaved(path: Path, pairs) -> Path:
    path.write_text("".join(_fq(f"{rid}/1", a) + _fq(f"{rid}/2", b) for rid, a, b in pairs))
    return path


def write_sheet(path: Path, rows) -> Path:
    """``rows``: (name, file[, file]); with a header and a comment, as labs write them."""
    path.write_text("# sequencing run 42\nsample\tR1\tR2\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path
