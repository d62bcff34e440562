"""The chunk / translate / consensus subcommands, run as a real process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from virnucdist.cli import COMMANDS, build_parser
from virnucdist.data.index import read_fasta


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "virnucdist.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def _records(path):
    return [(r.id, r.seq) for r in read_fasta(path)]


@pytest.fixture
def ref(shared_dir):
    return shared_dir / "data" / "virnucpro-reference"


def test_chunk_translate_consensus_pipeline(ref, tmp_path):
    chunked = tmp_path / "chunked.fa"
    r = _cli("chunk", ref / "test_with_orfs.fa", "--chunk-size", 500, "-o", chunked)
    assert r.returncode == 0, r.stderr
    assert "2 reads in, 2 chunks out, 0 empty reads skipped" in r.stderr
    assert _records(chunked) == _records(ref / "test_with_orfs_chunked500.fa")
    assert all(len(line) != 60 for line in chunked.read_text().splitlines())  # one line per sequence

    nuc, prot = tmp_path / "nuc.fa", tmp_path / "prot.faa"
    r = _cli("translate", chunked, "--nucleotide-out", nuc, "--protein-out", prot)
    assert r.returncode == 0, r.stderr
    assert "2 chunks in, 4 frames kept" in r.stderr
    assert nuc.read_text() == (ref / "test_with_orfs_identified_nucleotide.fa").read_text()
    assert prot.read_text() == (ref / "test_with_orfs_identified_protein.faa").read_text()

    out = tmp_path / "highest.csv"
    r = _cli("consensus", ref / "prediction_results.txt", "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == (ref / "prediction_results_highestscore.csv").read_bytes()


def test_translate_default_outputs(ref, tmp_path):
    src = tmp_path / "sample.fa"
    src.write_text((ref / "test_with_orfs_chunked500.fa").read_text())
    r = _cli("translate", src)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sample_identified_nucleotide.fa").exists()
    assert (tmp_path / "sample_identified_protein.faa").exists()


def test_empty_reads_reported(tmp_path):
    src = tmp_path / "in.fa"
    src.write_text(">a\nACGT\n>empty\n>b\n" + "A" * 600 + "\n")
    out = tmp_path / "out.fa"
    r = _cli("chunk", src, "--chunk-size", 500, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "3 reads in, 3 chunks out, 1 empty reads skipped" in r.stderr
    assert [rid for rid, _ in _records(out)] == ["a_chunk_1", "b_chunk_1", "b_chunk_2"]


def test_bad_fasta_one_line_error(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text("this is not fasta\nACGT\n")
    out = tmp_path / "out.fa"
    r = _cli("chunk", bad, "--chunk-size", 500, "-o", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("virnucdist: error: ") and "bad.fa" in lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()  # no half-written output


def test_missing_input_one_line_error(tmp_path):
    r = _cli("consensus", tmp_path / "nope.txt")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"virnucdist: error: {tmp_path / 'nope.txt'}: no such file"]


def test_main_in_process_and_registry(ref, tmp_path, capsys):
    from virnucdist.cli import main

    assert set(COMMANDS) >= {"chunk", "translate", "consensus"}
    assert main(["consensus", str(ref / "prediction_results.txt"), "-o", str(tmp_path / "c.csv")]) == 0
    assert "4 frames in, 2 chunks out, 2 virus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["chunk", "x.fa", "--chunk-size", "400", "-o", "y.fa"])
    assert exc.value.code == 2
