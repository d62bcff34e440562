"""The bundled examples' outputs, byte for byte, as the code made them before the house was rebuilt.

A small CPU run (random weights, fp32) of examples/proteins.fa (ESM-2), examples/reads.fa
(DNABERT-S-tiny) and the predict demo; every dataset's bytes and VirNucPro's text files are hashed
and compared with the hashes recorded from the code before the refactor (commit fb92f15). Float
bytes depend on the platform's kernels, so the recorded hashes apply only where they were made
(the torch version and CPU architecture below); elsewhere the test is skipped.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from virnucdist import EmbedConfig, PredictConfig, embed, predict
from virnucdist.data.fasta import write_fasta
from virnucdist.data.index import read_fasta

REPO = Path(__file__).resolve().parents[2]
RECORDED_ON = ("2.13.0+cpu", "x86_64")
EXPECTED = {"dnabert": {"embeddings": "5e74cd0d25881035", "ids": "93fa9c6823e18ef8"},
 "esm2": {"embeddings": "eb8270ee582d4f5e", "ids": "f1c9c64923778ecd"},
 "nucleotide_embeddings.h5": {"embeddings": "bf82cd51dff4403a", "ids": "968d5565a124d101"},
 "prediction_results.txt": "f84c29570051be0c",
 "prediction_results_highestscore.csv": "a910282919edc938",
 "protein_embeddings.h5": {"embeddings": "f33b00f7900df1b2", "ids": "968d5565a124d101"},
 "read_summary.tsv": "56a748eabfeac3a1"}


def _bytes(values: np.ndarray) -> bytes:
    if values.dtype.kind in "OSU":  # strings (ids): their text, not the object array's pointers
        return "\n".join(v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()).encode()
    return np.ascontiguousarray(values).tobytes()


def _h5(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, hashlib.sha256(_bytes(obj[()])).hexdigest()[:16])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def outputs(tmp: Path) -> dict:
    """The hashes of the three small runs (the first 48 proteins, the first 24 reads)."""
    prot, reads = tmp / "p.fa", tmp / "r.fa"
    write_fasta(prot, [(r.id, r.seq) for r in read_fasta(REPO / "examples" / "proteins.fa")][:48])
    write_fasta(reads, [(r.id, r.seq) for r in read_fasta(REPO / "examples" / "reads.fa")][:24])
    common = dict(random_init=True, num_workers=0, device="cpu", quiet=True)
    embed(EmbedConfig(inputs=(str(prot),), model="esm2_t6_8M_UR50D", output_dir=str(tmp / "e"), **common))
    embed(EmbedConfig(inputs=(str(reads),), model="dnabert-s-tiny", output_dir=str(tmp / "d"), **common))
    predict(PredictConfig(inputs=(str(reads),), chunk_size=300, esm_model="esm2_t6_8M_UR50D",
                          dnabert_model="dnabert-s-tiny", output_dir=str(tmp / "v"), keep_intermediate=True, **common))
    got = {"esm2": _h5(tmp / "e" / "embeddings.h5"), "dnabert": _h5(tmp / "d" / "embeddings.h5")}
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "read_summary.tsv"):
        got[name] = _sha(tmp / "v" / name)
    for name in ("nucleotide_embeddings.h5", "protein_embeddings.h5"):
        got[name] = _h5(tmp / "v" / name)
    return got


@pytest.mark.skipif((torch.__version__, platform.machine()) != RECORDED_ON,
                    reason="float bytes recorded on another torch / CPU architecture")
def test_example_outputs_are_byte_identical_to_before_the_refactor(tmp_path):
    assert outputs(tmp_path) == EXPECTED
