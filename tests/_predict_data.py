"""Test data for ``virnucdist.predict``: synthetic reads, small models of the real widths, and an
independent reference computed one frame at a time with the stage functions.

Imported by tests/unit/test_predict.py and tests/multigpu/test_torchrun_predict.py (pytest puts
``tests/`` on ``sys.path`` for ``tests/conftest.py``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from virnucdist.models.classifier import load_classifier
from virnucdist.models.dnabert_s import DnaBertSConfig
from virnucdist.models.esm2 import ESM2Config
from virnucdist.models.loading import load_model
from virnucdist.packing import pack_token_arrays
from virnucdist.models.random_init import random_dnabert_s, random_esm2
from _formats import save_fair_esm_checkpoint, save_hf_dir, save_random_classifier
from virnucdist.vnp.chunk import chunk_records
from virnucdist.vnp.translate import CODON_TABLE, translate_records

SENSE = [c for c, aa in CODON_TABLE.items() if aa != "*"]


def orf(rng: np.random.Generator, n_codons: int) -> str:
    """Stop-free codons: the frame they are read in is always kept."""
    return "".join(SENSE[i] for i in rng.integers(0, len(SENSE), n_codons))


def make_reads(seed: int = 0, n: int = 60) -> list[tuple[str, str]]:
    """~``n`` reads: random DNA 150-1200 bp (some with N, some lower case), long-ORF reads (kept
    frames), short ones, one empty read."""
    rng = np.random.default_rng(seed)
    reads = []
    for i in range(n):
        if i % 6 == 0:  # long ORF, sometimes behind a few random bases
            seq = "".join(rng.choice(list("ACGT"), int(rng.integers(0, 3)))) + orf(rng, int(rng.integers(50, 400)))
        else:
            seq = "".join(rng.choice(list("ACGT"), int(rng.integers(150, 1201))))
        if i % 7 == 3:  # a run of N inside
            k = int(rng.integers(0, len(seq) - 20))
            seq = seq[:k] + "N" * int(rng.integers(1, 15)) + seq[k + 15:]
        if i % 5 == 2:
            seq = seq.lower()
        if i % 11 == 4:
            seq = seq[:int(rng.integers(3, 40))]  # very short: one chunk, few codons
        reads.append((f"read_{i}", seq))
    reads.insert(n // 2, ("empty_read", ""))
    return reads


def write_fasta_wrapped(path: Path, reads, width: int = 70) -> Path:
    with open(path, "w") as fh:
        for rid, seq in reads:
            fh.write(f">{rid} synthetic read\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i:i + width] + "\n")
    return path


_MODELS: dict[str, dict] = {}


def tiny_models(esm_layers: int = 0) -> dict:
    """Small models with the widths the classifier needs (DNABERT-S 768, ESM-2 2560), saved in the
    real formats and built once per process. Keys: esm (fair-esm .pt), dnabert (HF directory with a
    1-layer config), classifier (a pickled ``300_model.pth``, as the original saves it).

    A 2560-wide ESM-2 layer costs ~1 ms per token on a CPU core, so most tests use ``esm_layers=0``
    (embedding + residue mean; its embedding table is scaled up so proteins move the scores) and
    one test runs a real attention layer."""
    key = f"esm{esm_layers}"
    if key not in _MODELS:
        base = Path(tempfile.mkdtemp(prefix="vnd-predict-models-"))
        esm = random_esm2(ESM2Config(esm_layers, 2560, 40), seed=3, device=torch.device("cpu"), dtype=torch.float32)
        if esm_layers == 0:
            with torch.no_grad():
                esm.embed_tokens.weight.mul_(20.0)
        esm_path = save_fair_esm_checkpoint(esm, base / f"esm2_tiny_l{esm_layers}_2560.pt")
        if "dnabert" not in _MODELS:
            model, _ = random_dnabert_s(5, config=DnaBertSConfig(num_hidden_layers=1, intermediate_size=1024))
            _MODELS["dnabert"] = {"dir": save_hf_dir(model, base / "dnabert_tiny")}
            _MODELS["classifier"] = {"path": save_random_classifier(base / "300_model.pth", seed=4, fmt="pickle")}
        _MODELS[key] = {"esm": esm_path, "dnabert": _MODELS["dnabert"]["dir"],
                        "classifier": _MODELS["classifier"]["path"]}
    return _MODELS[key]


def reference(reads, chunk_size: int, models: dict) -> list[dict]:
    """Frame by frame, as the original does it: chunk -> translate -> embed each frame alone ->
    concat(DNABERT-S, ESM-2) -> MLP -> softmax. Returns a dict per kept frame, in output order."""
    esm = load_model(str(models["esm"]))
    dna = load_model(str(models["dnabert"]))
    clf = load_classifier(models["classifier"])
    out = []
    with torch.inference_mode():
        for fr in translate_records(chunk_records(reads, chunk_size)):
            p = esm.embed(pack_token_arrays([esm.tokenizer.encode(fr.protein)], [0])).pooled[0]
            n = dna.embed(pack_token_arrays([dna.tokenizer.encode(fr.nucleotide)], [0])).pooled[0]
            s = torch.softmax(clf(torch.cat([n, p], dim=1)), dim=1)[0]
            out.append({"id": fr.id, "score1": float(s[0]), "score2": float(s[1]), "nuc": n[0].numpy().copy(),
                        "prot": p[0].numpy().copy(), "nucleotide": fr.nucleotide, "protein": fr.protein})
    return out
