"""The one engine: refusals without side effects, shards in input order, complete runs, dedup, names."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from virnucdist import EmbedConfig, embed
from virnucdist.errors import UserError
from virnucdist.data.fasta import write_fasta
from virnucdist.writers import read_embeddings
from _helpers import AA, MODEL


def _proteins(n=40, seed=0, max_len=60):
    rng = np.random.default_rng(seed)
    return [(f"p{i}", "".join(rng.choice(AA, size=int(rng.integers(5, max_len))))) for i in range(n)]


def _cfg(inputs, out, **kw) -> EmbedConfig:
    base = dict(inputs=tuple(str(p) for p in inputs), model=MODEL, output_dir=str(out), random_init=True, seed=0,
                device="cpu", num_workers=0, toks_per_batch=512, quiet=True)
    base.update(kw)
    return EmbedConfig(**base)


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_refused_run_leaves_the_earlier_run_byte_identical(tmp_path):
    a = tmp_path / "a.fa.gz"
    with gzip.open(a, "wt") as fh:
        fh.write("".join(f">{i}\n{s}\n" for i, s in _proteins(12)))
    out = tmp_path / "run"
    embed(_cfg([a], out, keep_shards=True))  # keeps shards/: more to disturb
    before = _hashes(out)
    assert "index/meta.json" in before and "index/gzip-0.npz" in before
    plain = gzip.decompress(a.read_bytes())  # the gzip input is read in place: no copy of it anywhere
    assert not any(plain in p.read_bytes() for p in out.rglob("*") if p.is_file())
    b = tmp_path / "a.fa.gz.new"
    with gzip.open(b, "wt") as fh:
        fh.write("".join(f">{i}\n{s}\n" for i, s in _proteins(12, seed=1)))
    b.replace(a)  # same path, other content: the index must be rebuilt to see it
    with pytest.raises(UserError, match="different input_fingerprint"):
        embed(_cfg([a], out))
    with pytest.raises(UserError, match="different input_fingerprint, model;"):
        embed(_cfg([a], out, model="esm2_t12_35M_UR50D"))
    assert _hashes(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_shards_in_input_order_and_complete_run_not_redone(tmp_path):
    fa = tmp_path / "p.fa"
    write_fasta(fa, _proteins(30))
    out = tmp_path / "run"
    res = embed(_cfg([fa], out, keep_shards=True, window_records=4))
    (shard,) = sorted((out / "shards").glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        rows = f["rows"][: int(f.attrs["committed"])]
    np.testing.assert_array_equal(rows, np.arange(30))  # one rank: every record, in input order
    ids, emb = read_embeddings(res.output)
    assert ids == [f"p{i}" for i in range(30)]
    mtime = res.output.stat().st_mtime_ns
    again = embed(_cfg([fa], out))
    assert again.already_complete and res.output.stat().st_mtime_ns == mtime
    assert json.loads((out / "run.json").read_text())["complete"] is True


def test_shards_and_gzip_copy_removed_after_success_and_run_still_complete(tmp_path):
    fa = tmp_path / "p.fa.gz"
    with gzip.open(fa, "wt") as fh:
        fh.write("".join(f">{i}\n{s}\n" for i, s in _proteins(10)))
    out = tmp_path / "run"
    res = embed(_cfg([fa], out))
    assert not (out / "shards").exists() and not (out / "inputs").exists()
    assert embed(_cfg([fa], out)).already_complete
    assert read_embeddings(res.output)[0] == [f"p{i}" for i in range(10)]


def test_dedup_computes_each_distinct_sequence_once(tmp_path):
    recs = _proteins(20)
    dup = recs + [(f"d{i}", s.lower() if i % 2 else s) for i, (_, s) in enumerate(recs[::3])]  # case differs
    rng = np.random.default_rng(3)
    dup = [dup[i] for i in rng.permutation(len(dup))]
    fa = tmp_path / "p.fa"
    write_fasta(fa, dup)
    on = embed(_cfg([fa], tmp_path / "on"))
    off = embed(_cfg([fa], tmp_path / "off", dedup=False))
    ids_on, e_on = read_embeddings(on.output)
    ids_off, e_off = read_embeddings(off.output)
    assert ids_on == ids_off == [r for r, _ in dup]
    seq = {r: s.upper() for r, s in dup}
    first = {}
    for k, r in enumerate(ids_on):
        j = first.setdefault(seq[r], k)
        np.testing.assert_array_equal(e_on[k], e_on[j])  # duplicates bit-identical to their first copy
    cos = (e_on * e_off).sum(1) / np.linalg.norm(e_on, axis=1) / np.linalg.norm(e_off, axis=1)
    assert cos.min() >= 0.99999
    d = on.report["dedup"]
    assert d["distinct"] == 20 and d["served_from_duplicate"] == len(dup) - 20
    assert on.report["summary"]["sequences"] == 20 and off.report["summary"]["sequences"] == len(dup)
    assert on.report["ranks"][0]["rss_after_plan_gb"] > 0  # each rank's memory once it holds its run


def test_importing_the_entrypoint_modules_keeps_the_functions_callable():
    code = ("import virnucdist, virnucdist.embed, virnucdist.predict\n"
            "from virnucdist import embed, predict\n"
            "assert callable(virnucdist.embed) and callable(virnucdist.predict)\n"
            "assert callable(embed) and callable(predict)\n"
            "import inspect; print(inspect.signature(virnucdist.tasks.embed.embed))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "RuntimeWarning" not in p.stderr
    h = subprocess.run([sys.executable, "-m", "virnucdist.embed", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert h.returncode == 0 and "--repr-layers" in h.stdout and "RuntimeWarning" not in h.stderr


def test_several_layers_in_one_pass_one_dataset_each(tmp_path):
    fa = tmp_path / "p.fa"
    write_fasta(fa, _proteins(12))
    res = embed(_cfg([fa], tmp_path / "multi", repr_layers=(0, 3, -1)))
    with h5py.File(res.output, "r") as f:
        got = {L: f[f"embeddings_layer{L}"][:] for L in (0, 3, 6)}
        np.testing.assert_array_equal(f["embeddings"][:], got[0])  # the first layer asked for
        assert json.loads(f.attrs["repr_layers"]) == [0, 3, 6]
    for L in (0, 3, 6):
        single = read_embeddings(embed(_cfg([fa], tmp_path / f"l{L}", repr_layer=L)).output)[1]
        np.testing.assert_allclose(got[L], single, atol=1e-5, rtol=0)
    assert np.abs(got[0] - got[6]).max() > 1e-3  # really different layers


def test_fastq_and_fastq_gz_embed_like_fasta_and_resume(tmp_path):
    recs = _proteins(16)
    fa = tmp_path / "p.fa"
    write_fasta(fa, recs)
    fq = tmp_path / "p.fq.gz"
    with gzip.open(fq, "wt") as fh:  # qualities are ignored; the name says nothing (content decides)
        fh.write("".join(f"@{i} some description\n{s}\n+\n{'I' * len(s)}\n" for i, s in recs))
    ids_a, emb_a = read_embeddings(embed(_cfg([fa], tmp_path / "fa")).output)
    out = tmp_path / "fq"
    res = embed(_cfg([fq], out, window_records=4, flush_every=1, keep_shards=True))
    ids_b, emb_b = read_embeddings(res.output)
    assert ids_b == ids_a and np.abs(emb_a - emb_b).max() < 1e-5
    # resume: as if killed after two windows and before finalize
    (out / "embeddings.h5").unlink()
    m = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**m, "complete": False}))
    (shard,) = (out / "shards").glob("shard-*.h5")
    with h5py.File(shard, "r+") as f:
        f.attrs["committed"] = 8
    again = embed(_cfg([fq], out, window_records=4, flush_every=1))
    assert again.report["summary"]["resumed_records"] == 8
    np.testing.assert_array_equal(read_embeddings(again.output)[1], emb_b)


def test_wrong_molecule_refused_in_one_line_unless_allowed(tmp_path):
    rng = np.random.default_rng(0)
    dna = tmp_path / "reads.fa"
    write_fasta(dna, [(f"r{i}", "".join(rng.choice(list("ACGT"), 120))) for i in range(10)])
    with pytest.raises(UserError, match=r"looks like DNA.*--allow-any-molecule") as e:
        embed(_cfg([dna], tmp_path / "o1"))
    assert "\n" not in str(e.value) and MODEL in str(e.value)
    assert not (tmp_path / "o1" / "index").exists()  # refused before anything was written
    res = embed(_cfg([dna], tmp_path / "o2", allow_any_molecule=True))
    assert len(read_embeddings(res.output)[0]) == 10


def test_terminal_stops_stripped_counted_and_embedded_like_clean(tmp_path):
    recs = _proteins(8)
    fa, clean = tmp_path / "stops.fa", tmp_path / "clean.fa"
    write_fasta(fa, [(i, s + "*") if k % 2 == 0 else (i, s) for k, (i, s) in enumerate(recs)])
    write_fasta(clean, recs)
    a = embed(_cfg([fa], tmp_path / "a"))
    b = embed(_cfg([clean], tmp_path / "b"))
    np.testing.assert_allclose(read_embeddings(a.output)[1], read_embeddings(b.output)[1], atol=1e-5, rtol=0)
    assert a.report["counters"]["terminal_stops"] == 4
