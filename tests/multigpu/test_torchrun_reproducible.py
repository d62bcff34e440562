"""``--reproducible``: 1, 2 and 3 ranks and other --toks-per-batch give byte-identical files (same hash);
so do a resume after a kill at a different world size and predict on 1 and 2 ranks. One thread per rank
(the guarantee is per device kind, torch version and thread count)."""

from __future__ import annotations

import numpy as np
import pytest
from _predict_data import make_reads, tiny_models, write_fasta_wrapped

from virnucdist.data.fasta import write_fasta
from _helpers import AA, MODEL, sha256, torchrun

pytestmark = pytest.mark.torchrun



def test_embed_same_bytes_for_1_2_3_ranks_other_budgets_and_a_resume(tmp_path):
    rng = np.random.default_rng(11)
    recs = [(f"p{i:03d}", "".join(rng.choice(AA, size=int(rng.integers(5, 300))))) for i in range(40)]
    fasta = tmp_path / "p.fa"
    write_fasta(fasta, recs)
    base = [str(fasta), "--model", MODEL, "--random-init", "--num-workers", "0", "--device", "cpu", "--quiet",
            "--reproducible", "--flush-every", "1"]
    hashes = {}
    for n, toks in ((1, "4096"), (2, "300")):  # 3 ranks: the resume below (a fresh 3-rank run cost 8 s more)
        out = tmp_path / f"n{n}"
        p = torchrun("virnucdist.embed", nproc=n, args=[*base, "--toks-per-batch", toks, "-o", str(out)])
        assert p.returncode == 0, p.stderr[-3000:]
        hashes[f"{n} ranks, --toks-per-batch {toks}"] = sha256(out / "embeddings.h5")
    out = tmp_path / "resumed"  # killed on 2 ranks, finished on 3
    p = torchrun("virnucdist.embed", nproc=2, args=[*base, "--toks-per-batch", "200", "-o", str(out)],
                  VIRNUCDIST_TEST_KILL_AT="batch:2", VIRNUCDIST_TEST_KILL_RANK="1")
    assert p.returncode != 0 and not (out / "embeddings.h5").exists()
    p = torchrun("virnucdist.embed", nproc=3, args=[*base, "--toks-per-batch", "200", "-o", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    hashes["killed on 2 ranks, resumed on 3"] = sha256(out / "embeddings.h5")
    assert len(set(hashes.values())) == 1, hashes


def test_predict_same_bytes_for_1_and_2_ranks(tmp_path):
    reads = make_reads(seed=4, n=12)
    fasta = write_fasta_wrapped(tmp_path / "reads.fa", reads)
    m = tiny_models()
    base = [str(fasta), "--chunk-size", "300", "--classifier", str(m["classifier"]), "--esm-model", str(m["esm"]),
            "--dnabert-model", str(m["dnabert"]), "--num-workers", "0", "--device", "cpu", "--quiet", "--reproducible"]
    got = []
    for n, toks in ((1, "4096"), (2, "500")):
        out = tmp_path / f"n{n}"
        p = torchrun("virnucdist.predict", nproc=n, args=[*base, "--toks-per-batch", toks, "-o", str(out)])
        assert p.returncode == 0, p.stderr[-3000:]
        got.append(sha256(out / "prediction_results.txt"))
    assert got[0] == got[1]
