"""The bad-input matrix (docs/bad-inputs.md), one test per row.

A mistake the user must fix: ``python -m virnucdist.embed`` exits 2 with exactly one
stderr line ``virnucdist: error: ...`` naming the file (and line/record) and what to do,
no traceback. Input that can be embedded anyway: embedded, and what was done to it
(skipped, truncated, unknown letters) counted in run_report.json and warned about once,
naming an example record. Never a silent drop.

Error rows run the module's entrypoint (``run_entrypoint(virnucdist.tasks.embed.main, argv)``, what
``python -m virnucdist.embed`` runs) in this process to save a torch start-up per row;
two rows run a real subprocess.

Rows proven elsewhere (not repeated here): NUL-byte binary via the CLI
(test_embed.py::test_cli_bad_fasta_one_line), a missing ESM-2 .pt via the CLI
(test_embed.py::test_cli_missing_weights_one_line), a malicious pickle as weights
(test_esm2.py, test_dnabert_s.py, test_classifier.py).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from virnucdist import EmbedConfig, embed
from virnucdist.tasks import embed as embedding
from virnucdist.data.fasta import FastaError, write_fasta
from virnucdist.launch.entry import run_entrypoint
from virnucdist.models.dnabert_s import DnaBertSConfig
from virnucdist.models.loading import load_model
from virnucdist.packing import pack_token_arrays
from virnucdist.models.random_init import random_dnabert_s
from _formats import save_hf_dir
from virnucdist.writers import read_embeddings
from _helpers import MODEL

PROTEINS = [("p1", "MKTAYIAKQRQISFVKSHFSRQ"), ("p2", "GSHMLEDPVDAFQ"), ("p3", "MSTNPKPQRKTKRNTNRRPQDVKFPGG")]
TINY_DNABERT = DnaBertSConfig(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=1)


# ----------------------------------------------------------------------------- helpers


def _cli(tmp_path: Path, *args: str, subprocess_: bool = False) -> subprocess.CompletedProcess:
    """``python -m virnucdist.embed ARGS``: in a subprocess, or (default, ~2 s faster a call) in this process
    through the same ``run_entrypoint(main)`` the module runs, with stderr captured."""
    if "--model" not in args:
        args = (*args, "--model", MODEL, "--random-init")
    if "-o" not in args:
        args = (*args, "-o", str(tmp_path / "out"))
    argv = [*args, "--num-workers", "0", "--device", "cpu", "--quiet"]
    if not subprocess_:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
            run_entrypoint(embedding.main, argv)
        return subprocess.CompletedProcess(argv, exit_.value.code, "", err.getvalue())
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRNUCDIST_TEST_")}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "virnucdist.embed", *argv], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def _one_error_line(p: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, one stderr line starting 'virnucdist: error:' that contains every needle; no traceback."""
    assert p.returncode == 2, f"rc {p.returncode}\n{p.stderr}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    line = lines[0]
    assert line.startswith("virnucdist: error:"), line
    for n in needles:
        assert n in line, (n, line)
    assert "Traceback" not in p.stderr
    return line


def _cfg(inputs, out, **kw) -> EmbedConfig:
    base = dict(inputs=tuple(str(p) for p in inputs), model=MODEL, output_dir=str(out), random_init=True,
                device="cpu", num_workers=0, toks_per_batch=1024, quiet=True)
    base.update(kw)
    return EmbedConfig(**base)


def _run(inputs, out, **kw) -> tuple[list[str], np.ndarray, dict]:
    res = embed(_cfg(inputs, out, **kw))
    ids, emb = read_embeddings(res.output)
    return ids, emb, json.loads((Path(out) / "run_report.json").read_text())


def _warnings(err: str, needle: str) -> list[str]:
    return [ln for ln in err.splitlines() if needle in ln]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Comparisons between runs are bit-exact: keep this process on one thread like the subprocesses."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def proteins(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_inputs")
    path = d / "clean.fa"
    write_fasta(path, PROTEINS)
    return path


@pytest.fixture(scope="module")
def clean_run(proteins, tmp_path_factory):
    """The clean protein file's embeddings, which the tolerated variants must reproduce exactly."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        out = tmp_path_factory.mktemp("clean_out")
        ids, emb, _ = _run([proteins], out)
        torch.set_num_threads(n)
    return ids, emb, out


@pytest.fixture(scope="module")
def dnabert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dnabert") / "tiny-dnabert-s"
    save_hf_dir(random_dnabert_s(0, config=TINY_DNABERT)[0], d)
    return d


# ----------------------------------------------------------------------------- user errors (exit 2, one line)


def test_empty_file(tmp_path):
    f = tmp_path / "empty.fa"
    f.write_bytes(b"")
    _one_error_line(_cli(tmp_path, str(f)), str(f), "line 1", "no FASTA or FASTQ records", "file is empty")


def test_duplicate_ids_in_one_file(tmp_path):
    f = tmp_path / "dup.fa"
    f.write_text(">a\nMKV\n>b\nMKV\n>a second\nGGG\n")
    _one_error_line(_cli(tmp_path, str(f)), str(f), "line 5", "duplicate sequence id 'a'", "line 1",
                    "rename or remove one of them")


def test_duplicate_ids_across_files(tmp_path):
    f1, f2 = tmp_path / "one.fa", tmp_path / "two.fa"
    f1.write_text(">a\nMKV\n>shared\nMKV\n")
    f2.write_text(">c\nGGG\n>shared\nGGG\n")
    line = _one_error_line(_cli(tmp_path, str(f1), str(f2), subprocess_=True), "duplicate sequence id 'shared'",
                           f"{f1}, line 3", f"{f2}, line 3", "across all input files")
    assert line.count(str(f2)) >= 1 and line.count(str(f1)) == 1


@pytest.mark.parametrize("content, needles", [
    (b"Sample sheet\nrun 12, lane 3\n", ("line 1", "expected a FASTA header line starting with '>'",
                                         "is this a FASTA file?")),
    (b"@read1\nACGT\n+\nIII\n", ("line 4", "record 'read1' (header at line 1) has 4 sequence letters but 3 quality")),
])
def test_text_that_is_not_fasta(tmp_path, content, needles):
    """Text that is not FASTA; FASTQ is read (test_fastq.py), a malformed one is named by line."""
    f = tmp_path / "notes.txt"
    f.write_bytes(content)
    _one_error_line(_cli(tmp_path, str(f)), str(f), *needles)


@pytest.mark.parametrize("kind", ["png", "truncated_gzip"])
def test_binary_garbage(tmp_path, kind):
    """No NUL byte here (that case: test_embed.py::test_cli_bad_fasta_one_line): undecodable bytes, and a
    gzip stream cut short."""
    f = tmp_path / f"data.{kind}"
    if kind == "png":
        rng = np.random.default_rng(0)
        f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(1, 256, 4096, dtype=np.uint8)))
        needles = ("line 1", "not valid UTF-8", "not FASTA")
    else:
        seq = "".join(np.random.default_rng(0).choice(list("ACGT"), 40_000)).encode()
        z = gzip.compress(b">a\n" + seq + b"\n")
        f.write_bytes(z[: len(z) // 2])  # a download cut short
        needles = ("corrupt or truncated gzip", "re-download or recompress")
    _one_error_line(_cli(tmp_path, str(f)), str(f), *needles)


def test_non_ascii_letter_in_sequence(tmp_path):
    f = tmp_path / "utf8.fa"
    f.write_text(">a\nMKV\n>b\nMKΔV\n", encoding="utf-8")
    _one_error_line(_cli(tmp_path, str(f)), str(f), "line 4", "non-ASCII character in sequence line",
                    "plain ASCII letters")


def test_output_directory_not_writable(proteins, tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits: a path below a regular file cannot be created
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        target = blocker / "out"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out"
    try:
        _one_error_line(_cli(tmp_path, str(proteins), "-o", str(target)), str(target), "not writable",
                        "choose another with -o")
    finally:
        if os.geteuid() != 0:
            (tmp_path / "ro").chmod(0o700)


@pytest.mark.parametrize("case", ["dnabert_dir_without_weights", "dnabert_not_downloaded"])
def test_missing_weights(proteins, dnabert_dir, tmp_path, case):
    """(A missing ESM-2 .pt: test_embed.py::test_cli_missing_weights_one_line.)"""
    if case == "dnabert_dir_without_weights":
        d = tmp_path / "dnabert-s"
        d.mkdir()
        for name in ("config.json", "tokenizer.json"):
            (d / name).write_bytes((dnabert_dir / name).read_bytes())
        spec, needles = str(d), (str(d), "lacks: model.safetensors or pytorch_model.bin")
    else:
        spec, needles = "dnabert-s", ("'dnabert-s' does not exist",)
    # --allow-any-molecule: proteins for DNABERT-S would be refused first (test_wrong_molecule_* covers that)
    _one_error_line(_cli(tmp_path, str(proteins), "--model", spec, "--allow-any-molecule",
                         subprocess_=case == "dnabert_not_downloaded"),
                    *needles,
                    "huggingface-cli download zhihan1996/DNABERT-S", "--random-init")


@pytest.mark.parametrize("case", ["dnabert_weights_as_esm", "esm_weights_in_dnabert_dir"])
def test_weights_of_another_model(proteins, dnabert_dir, tmp_path, case):
    from safetensors.torch import save_file

    if case == "dnabert_weights_as_esm":
        spec = tmp_path / "esm2_custom.pt"
        torch.save(random_dnabert_s(0, config=TINY_DNABERT)[0].state_dict(), spec)
        needles = (str(spec), "not a fair-esm ESM-2 checkpoint")
    else:
        spec = tmp_path / "dnabert-s"
        spec.mkdir()
        for name in ("config.json", "tokenizer.json"):
            (spec / name).write_bytes((dnabert_dir / name).read_bytes())
        esm = load_model(MODEL, random_init=True).module
        save_file({k: v.contiguous() for k, v in esm.state_dict().items()}, str(spec / "model.safetensors"))
        needles = (f"{spec}/model.safetensors", "do not match DNABERT-S", "looks like an ESM checkpoint")
    _one_error_line(_cli(tmp_path, str(proteins), "--model", str(spec), "--allow-any-molecule"), *needles)


def test_error_keeps_earlier_output(proteins, tmp_path):
    """A finished run, then the same output directory with a broken input: the error changes nothing there."""
    out = tmp_path / "out"
    embed(_cfg([proteins], out))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "bad.fa"
    bad.write_text(">x\nMKV\n>x\nMKV\n")
    with pytest.raises(FastaError, match="duplicate sequence id 'x'"):
        embed(_cfg([bad], out))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "index.error"} == before


# ----------------------------------------------------------------------------- embedded anyway, counted


def test_empty_record_is_a_counted_skip(tmp_path, capsys):
    f = tmp_path / "gaps.fa"
    f.write_text(">p1\nMKTAYIAK\n>hollow description\n>p3\nGSHMLE\n")
    ids, emb, rep = _run([f], tmp_path / "out")
    assert ids == ["p1", "p3"] and emb.shape[0] == 2
    assert rep["skipped"] == {"empty": ["hollow"], "empty_count": 1}
    [warning] = _warnings(capsys.readouterr().err, "empty record")
    assert "'hollow'" in warning


@pytest.mark.parametrize("alphabet", ["protein", "dna"])
def test_invalid_letters_are_counted(tmp_path, capsys, dnabert_dir, alphabet):
    """Letters outside the model's alphabet become its unknown token: embedded, counted, one warning."""
    f = tmp_path / "odd.fa"
    if alphabet == "protein":
        recs = [("ok", "MKTAYIAK"), ("stop_codon", "MKT*AYI"), ("digits", "MK1TA2"), ("ok2", "GSHMLE")]
        model, letters = MODEL, {"stop_codon": "has '*';", "digits": "has '1', '2';"}
    else:
        recs = [("ok", "ACGTACGTTGCA" * 5), ("with_n", "ACGTNNNNACGT" * 5), ("ok2", "TTGACA" * 10)]
        model, letters = str(dnabert_dir), {"with_n": "has 'N';"}
    write_fasta(f, recs)
    ids, emb, rep = _run([f], tmp_path / "out", model=model, random_init=alphabet == "protein")
    assert ids == [r for r, _ in recs] and np.isfinite(emb).all()
    n_bad = 2 if alphabet == "protein" else 1
    assert rep["summary"]["records_with_unknown_letters"] == n_bad
    bad = {r for r, _ in recs if r not in ("ok", "ok2")}
    assert set(rep["ranks"][0]["unknown_letter_examples"]) == bad
    warnings = _warnings(capsys.readouterr().err, "does not know")
    assert len(warnings) == 1  # once per run, naming one example: its id, file, line and letters
    example = rep["ranks"][0]["unknown_letter_examples"][0]
    assert f"{n_bad} record(s)" in warnings[0] and f"e.g. {example!r} at {f}, line" in warnings[0]
    assert letters[example] in warnings[0]


def test_lowercase_equals_uppercase(proteins, clean_run, tmp_path):
    f = tmp_path / "lower.fa"
    write_fasta(f, [(r, s.lower()) for r, s in PROTEINS])
    ids, emb, rep = _run([f], tmp_path / "out")
    assert ids == clean_run[0]
    np.testing.assert_array_equal(emb, clean_run[1])
    assert rep["summary"]["records_with_unknown_letters"] == 0


def test_crlf_line_endings(clean_run, tmp_path):
    f = tmp_path / "crlf.fa"
    f.write_bytes("".join(f">{r} some description\r\n{s[:10]}\r\n{s[10:]}\r\n" for r, s in PROTEINS).encode())
    ids, emb, _ = _run([f], tmp_path / "out")
    assert ids == clean_run[0]
    np.testing.assert_array_equal(emb, clean_run[1])


def test_gzip_input(proteins, clean_run, tmp_path):
    f = tmp_path / "clean.fa.gz"
    f.write_bytes(gzip.compress(proteins.read_bytes()))
    ids, emb, _ = _run([f], tmp_path / "out")
    assert ids == clean_run[0]
    np.testing.assert_array_equal(emb, clean_run[1])
    fingerprints = []
    for out in (tmp_path / "out", clean_run[2]):
        with h5py.File(out / "embeddings.h5", "r") as h:
            fingerprints.append(h.attrs["input_fingerprint"])
    assert fingerprints[0] == fingerprints[1]  # the content's, decompressed: gzip or not is the same input


def test_protein_longer_than_1022_is_truncated_and_counted(tmp_path, capsys):
    rng = np.random.default_rng(1)
    long_seq = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 1500))
    f = tmp_path / "long.fa"
    write_fasta(f, [("short", "MKTAYIAK"), ("titin_piece", long_seq)])
    ids, emb, rep = _run([f], tmp_path / "out")
    assert ids == ["short", "titin_piece"]
    assert rep["summary"]["truncated"] == 1
    assert rep["truncated_records"] == {"records": 1, "max_residues": 1022, "examples": ["titin_piece"]}
    [warning] = _warnings(capsys.readouterr().err, "longer than 1022")
    assert "'titin_piece' (1500 residues)" in warning and str(f) in warning and "--truncation-seq-length" in warning
    # the truncated record is the model's embedding of its first 1022 residues
    m = load_model(MODEL, random_init=True)
    with torch.inference_mode():
        direct = m.embed(pack_token_arrays([m.tokenizer.encode(long_seq[:1022])], [0])).pooled[0]
    np.testing.assert_allclose(emb[1], direct[0].numpy(), rtol=0, atol=1e-5)


def test_very_long_dna_read_gets_its_own_batch(dnabert_dir, tmp_path):
    """DNABERT-S has no length cap (ALiBi): a 20 kb read far over the token budget is embedded whole, alone."""
    rng = np.random.default_rng(2)
    long_read = "".join(rng.choice(list("ACGT"), 20_000))
    recs = [(f"r{i}", "".join(rng.choice(list("ACGT"), 150))) for i in range(6)]
    recs.insert(3, ("long_read", long_read))
    f = tmp_path / "reads.fa"
    write_fasta(f, recs, width=80)
    ids, emb, rep = _run([f], tmp_path / "out", model=str(dnabert_dir), random_init=False, toks_per_batch=256)
    assert ids == [r for r, _ in recs]
    r0 = rep["ranks"][0]
    m = load_model(str(dnabert_dir))
    n_long = len(m.tokenizer.encode(long_read))
    assert n_long > 4000 and r0["tokens"] > n_long
    assert r0["batches"] >= 2 and r0["packing_efficiency"] <= 1.0  # the long read's batch counts at its own size
    assert rep["summary"]["truncated"] == 0 and rep["truncated_records"]["records"] == 0
    with torch.inference_mode():
        direct = m.embed(pack_token_arrays([m.tokenizer.encode(long_read)], [0])).pooled[0]
    np.testing.assert_allclose(emb[3], direct[0].numpy(), rtol=0, atol=1e-5)


def test_ids_with_spaces_and_non_ascii(tmp_path):
    """The id is the header's first word (the rest is description); UTF-8 ids are kept as they are."""
    f = tmp_path / "ids.fa"
    f.write_text(">sp|P1|ONE protein one\tOS=Homo\nMKTAYIAK\n>Δ-vïrus_π 2nd\nGSHMLE\n>日本 x\nMKV\n", encoding="utf-8")
    ids, emb, rep = _run([f], tmp_path / "out")
    assert ids == ["sp|P1|ONE", "Δ-vïrus_π", "日本"] and emb.shape[0] == 3
    assert rep["ranks"][0]["sequences"] == 3
