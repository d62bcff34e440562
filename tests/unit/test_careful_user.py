"""The defects a careful user hit (issue 25, items 2, 4, 5, 9, 10): each is one clear line now."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from virnucdist import EmbedConfig, embed
from virnucdist._version import __version__
from virnucdist.cli import main as cli_main
from virnucdist.data.fasta import write_fasta
from virnucdist.data.index import SequenceIndex
from virnucdist.errors import UserError
from virnucdist.launch.dist import init_distributed
from virnucdist.models.errors import ModelLoadError
from virnucdist.tasks.embed import build_parser as embed_parser
from virnucdist.tasks.predict import PredictConfig, PredictTask
from virnucdist.tasks.predict import build_parser as predict_parser
from _helpers import MODEL


def _cfg(fasta, out, **kw) -> EmbedConfig:
    return EmbedConfig(inputs=(str(fasta),), model=kw.pop("model", MODEL), output_dir=str(out),
                       random_init=kw.pop("random_init", True), num_workers=0, device="cpu", quiet=True, **kw)


@pytest.mark.parametrize("flag,value", [("--truncation-seq-length", "0"), ("--truncation-seq-length", "-1"),
                                        ("--toks-per-batch", "0"), ("--toks-per-batch", "-5"),
                                        ("--num-workers", "-1"), ("--window-records", "0"), ("--flush-every", "0")])
def test_out_of_range_flags_are_argparse_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        embed_parser().parse_args(["x.fa", "--model", MODEL, "-o", "out", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}: must be" in err and f"got {value}" in err
    if flag in ("--toks-per-batch", "--num-workers", "--window-records"):
        with pytest.raises(SystemExit):
            predict_parser().parse_args(["x.fa", "--chunk-size", "300", "--esm-model", MODEL, "--dnabert-model", "d",
                                         "-o", "out", flag, value])
    ok = embed_parser().parse_args(["x.fa", "--model", MODEL, "-o", "out", flag, "1"])
    assert getattr(ok, flag[2:].replace("-", "_")) == 1


def test_header_only_input_is_an_error(tmp_path):
    fasta = tmp_path / "h.fa"
    fasta.write_text(">a\n>b desc\n")
    with pytest.raises(UserError, match=r"no sequences to embed: 2 record\(s\), all empty"):
        embed(_cfg(fasta, tmp_path / "out"))
    assert not (tmp_path / "out" / "embeddings.h5").exists()


def test_rna_reads_are_accepted_by_predict(tmp_path):
    fasta = tmp_path / "rna.fa"
    write_fasta(fasta, [("r1", "ACGUUAGCUAGCUAGGCUAUCGAUCGUAGCUAGCUAUUUAGC" * 4)])
    idx = SequenceIndex.build([str(fasta)])
    task = PredictTask(PredictConfig(inputs=(str(fasta),), chunk_size=300, esm_model=MODEL,
                                     dnabert_model="dnabert-s-tiny", output_dir=str(tmp_path / "o"), random_init=True))
    task.check(idx)  # RNA is read as DNA (U as T)
    prot = tmp_path / "prot.fa"
    write_fasta(prot, [("p", "MKVLAAGIVGLLLAWQSTPEDRKHFYW" * 3)])
    with pytest.raises(UserError, match="looks like protein"):
        task.check(SequenceIndex.build([str(prot)]))


def test_foreign_embeddings_h5_is_refused_without_overwrite(tmp_path):
    fasta = tmp_path / "p.fa"
    write_fasta(fasta, [("a", "MKVLAAG"), ("b", "MKKLLW")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "embeddings.h5").write_bytes(b"someone else's file")
    with pytest.raises(UserError, match="holds no run.json"):
        embed(_cfg(fasta, out))
    assert (out / "embeddings.h5").read_bytes() == b"someone else's file"
    embed(_cfg(fasta, out, overwrite=True))
    assert (out / "embeddings.h5").read_bytes()[:4] == b"\x89HDF"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a node without a visible GPU")
def test_device_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        init_distributed("cuda")


@pytest.mark.parametrize("kind", ["empty-dir", "text-file"])
def test_a_model_path_that_is_no_model_is_one_line_about_the_model(tmp_path, kind):
    dna = tmp_path / "d.fa"
    write_fasta(dna, [("a", "ACGTACGTAGCTAGCTAGCATCGATCGAC")])
    model = tmp_path / "model"
    model.mkdir() if kind == "empty-dir" else model.write_text("not weights\n")
    with pytest.raises(ModelLoadError, match=r"--model .*model is (an empty directory|not a model checkpoint)"):
        embed(_cfg(dna, tmp_path / "out", model=str(model), random_init=False))


def test_console_script_lists_and_runs_embed_and_predict(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    text = capsys.readouterr().out
    assert "embed" in text and "predict" in text
    with pytest.raises(SystemExit):
        cli_main(["--version"])
    assert capsys.readouterr().out.strip() == f"virnucdist {__version__}"
    fasta = tmp_path / "p.fa"
    write_fasta(fasta, [("a", "MKVLAAG"), ("b", "MKKLLW")])
    p = subprocess.run([sys.executable, "-m", "virnucdist", "embed", str(fasta), "--model", MODEL, "--random-init",
                        "-o", str(tmp_path / "out"), "--device", "cpu", "--num-workers", "0", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "out" / "embeddings.h5").is_file()


def test_disk_full_says_the_jobs_safe_count_once(capsys):
    """A full disk on any rank: the line carries the job's safe count (rank 0 counts every rank's shards), never
    one rank's own count."""
    import contextlib
    import io

    from virnucdist.launch.entry import run_entrypoint
    from virnucdist.writers.durable import DiskFullError

    def main(argv):
        e = DiskFullError("no space left on /x/shards; free space and rerun the same command")
        e.safe = 190  # the engine counts every rank's shards on rank 0
        raise e

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        run_entrypoint(main, [])
    assert e.value.code == 2
    assert err.getvalue().strip() == ("virnucdist: error: no space left on /x/shards; free space and rerun the same "
                                      "command; 190 records are safe")


def test_disk_full_during_finalize_is_one_user_error(tmp_path, monkeypatch):
    import errno

    import virnucdist.tasks.embed as embed_task
    from virnucdist.writers.durable import DiskFullError

    fasta = tmp_path / "p.fa"
    write_fasta(fasta, [("a", "MKVLAAG"), ("b", "MKKLLW")])

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "Can't close file (file write failed: errno = 28)")

    monkeypatch.setattr(embed_task, "write_embeddings_h5", full)
    with pytest.raises(DiskFullError, match="while writing the final files; free space and rerun"):
        embed(_cfg(fasta, tmp_path / "out", keep_shards=True))


def test_a_log_file_that_cannot_be_written_is_quiet(tmp_path, capsys):
    import errno
    import logging

    from virnucdist.launch.logs import setup_logging

    log = setup_logging(tmp_path, rank=1)
    fh = next(h for h in log.handlers if isinstance(h, logging.FileHandler))

    class Full:
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    fh.stream = Full()
    log.warning("something")
    assert "Logging error" not in capsys.readouterr().err
    setup_logging(None, rank=0)


_LONG_C_CALL = """
import torch
from virnucdist.launch.entry import run_entrypoint

def main(argv):
    torch.set_num_threads(1)
    a = torch.ones(16000, 16000)
    print("ready", flush=True)
    a @ a  # one C call of 8 TFLOP (over 30 s on one thread): no signal handler runs until it returns
    return 0

run_entrypoint(main)
"""


def test_ctrl_c_during_a_long_c_call_acts_without_waiting_for_it():
    import signal

    p = subprocess.Popen([sys.executable, "-c", _LONG_C_CALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith(
        "virnucdist: interrupted; the running batch did not yield within 5 s, stopping now; rerun the same command")
