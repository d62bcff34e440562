"""Time predict's finalize (rank 0 writing VirNucPro's files from the shards) on CPU, no models.

    python benchmarks/predict_finalize.py --reads 1000000 [--baseline-src /tmp/fin-base/src] [--workdir DIR]
    python benchmarks/predict_finalize.py --smoke --baseline-src /tmp/fin-base/src

Builds a finished predict run directory once (``--workdir``, reused when it holds the same
workload): the reads of ``benchmarks/scaling.py`` (random 150-bp reads, ``read_NNNNNNN``; with
``--paired`` an R1 and an R2 file), the run's index (the library's own, as a run opens it), and
per-rank result shards written through :class:`virnucdist.writers.ShardWriter` with the predict
task's own schema. Every read's chunks and kept frames come from VirNucPro's real rules
(``chunk_spans``, six-frame translation: frames with a stop are dropped); each frame's two scores are a
float32 softmax of random logits. ``--dup`` makes a fraction of the reads copies of earlier ones
(dedup: only the first is in the shards), ``--empty`` a fraction empty reads.

Then it times the engine's finalize of the predict task (``engine.loop._finalize``: the shards
opened, every result file written) in a fresh interpreter with this checkout's ``src``, and, with
``--baseline-src``, with that checkout's ``src`` on the same directory in the same run, and checks
that every output file is byte-identical (sha256; an HDF5 file (``--keep-intermediate``) by its
datasets' and attributes' content, not its bytes: the layout of its variable-length id strings
depends on the writes that stored them). ``--smoke``: 3000 reads with duplicates, empty
reads, mates and ``--keep-intermediate`` embeddings, in seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
READ_LENGTH, CHUNK = 150, 300
DIMS = {"dna": 8, "esm": 12}  # embedding widths of the --keep-intermediate stand-ins (small: the text is timed)


def workload(args) -> dict:
    return {"reads": args.reads, "paired": args.paired, "dup": args.dup, "empty": args.empty,
            "ranks": args.ranks, "keep_intermediate": args.keep_intermediate, "format": 2}


def make_reads(n: int, paired: bool, dup: float, empty: float) -> list[list[tuple[str, str]]]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _common import random_dna

    recs = random_dna(n, READ_LENGTH, seed=READ_LENGTH)  # the reads of benchmarks/scaling.py
    rng = np.random.default_rng(7)
    if dup > 0:  # exact copies of an earlier read, spread at random
        copies = np.sort(rng.choice(np.arange(1, n), size=int(dup * n), replace=False))
        for c, o in zip(copies.tolist(), (rng.random(len(copies)) * copies).astype(np.int64).tolist()):
            recs[c] = (recs[c][0], recs[o][1])
    if empty > 0:
        for c in rng.choice(n, size=int(empty * n), replace=False).tolist():
            recs[c] = (recs[c][0], "")
    if not paired:
        return [recs]
    half = n // 2  # R1 = the first half, R2 = the second, mates by id
    return [[(f"{recs[i][0]}/1", recs[i][1]) for i in range(half)],
            [(f"{recs[i][0]}/2", recs[half + i][1]) for i in range(half)]]


def frames_of(seqs: list[str]) -> tuple[list[int], list[int], list[int], list[int]]:
    """Per read: n_chunks and kept frames; per kept frame (read by read): chunk and frame code. Predict's
    own rules (tasks/predict.py: chunk_spans, six_frame; here six_frame batched as translate_chunks)."""
    from virnucdist.vnp.chunk import chunk_spans
    from virnucdist.vnp.translate import FRAME_NAMES, translate_chunks

    n_chunks, chunks = [], []
    for j, seq in enumerate(seqs):
        seq = seq.upper().replace("U", "T")
        spans = chunk_spans(len(seq), CHUNK)
        n_chunks.append(len(spans))
        chunks += [(f"{j}:{k}:", seq[a:b]) for k, (a, b) in enumerate(spans)]
    n_frames, chunk, code = [0] * len(seqs), [], []
    for fr in translate_chunks(chunks):
        j, k, name = fr.id.split(":")
        n_frames[int(j)] += 1
        chunk.append(int(k))
        code.append(FRAME_NAMES.index(name))
    return n_chunks, n_frames, chunk, code


class _Model:
    """What finalize asks of a model with --keep-intermediate: its width and name."""

    def __init__(self, dim: int, name: str):
        self.dim, self.name = dim, name


def make_task(work: Path, out: Path, keep: bool):
    from virnucdist.tasks.predict import PredictConfig, PredictTask

    inputs = tuple(str(p) for p in sorted(work.glob("reads*.fa")))
    task = PredictTask(PredictConfig(inputs=inputs, chunk_size=CHUNK, esm_model="esm2_t6_8M_UR50D",
                                     dnabert_model="dnabert-s-tiny", random_init=True, output_dir=str(out),
                                     keep_intermediate=keep, quiet=True, device="cpu"))
    task.dna, task.esm = _Model(DIMS["dna"], "dna-stand-in"), _Model(DIMS["esm"], "esm-stand-in")
    return task


def build(work: Path, args) -> None:
    """The run directory: reads, OUTDIR/index, OUTDIR/shards (written once, reused)."""
    from virnucdist.data.runindex import load_run_index, open_run_index
    from virnucdist.writers import Part, ShardWriter

    stamp = work / "workload.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == workload(args):
        print(f"reusing {work}")
        return
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    for old in work.glob("reads*.fa"):
        old.unlink()
    files = make_reads(args.reads, args.paired, args.dup, args.empty)
    for k, recs in enumerate(files):
        with open(work / f"reads{k + 1}.fa", "w") as f:
            f.write("".join(f">{rid}\n{seq}\n" for rid, seq in recs))
    import shutil

    for d in ("index", "shards"):
        shutil.rmtree(work / d, ignore_errors=True)
    ri = open_run_index(work, [str(work / f"reads{k + 1}.fa") for k in range(len(files))])
    ri.commit()
    index = load_run_index(work)
    n = len(index)
    source = np.asarray(index.representatives(), dtype=np.int64)
    length = np.asarray(index.length)
    work_rows = np.flatnonzero((source == np.arange(n)) & (length > 0))  # what the ranks compute
    task = make_task(work, work / "unused", args.keep_intermediate)
    schema = task.schema()
    rng = np.random.default_rng(11)
    t1 = time.perf_counter()
    for rank, rows in enumerate(np.array_split(work_rows, args.ranks)):
        w = ShardWriter(work / "shards", rank, schema, fingerprint=index.fingerprint)
        for a in range(0, len(rows), 4096):
            win = rows[a:a + 4096]
            n_chunks, n_frames, chunks, codes = frames_of([index.read(r) for r in win.tolist()])
            f = len(chunks)
            logits = (rng.standard_normal((f, 2)) * 3).astype(np.float32)
            e = np.exp(logits - logits.max(1, keepdims=True))
            scores = (e / e.sum(1, keepdims=True)).astype(np.float32)  # softmax in float32, as on the device
            ragged = {"chunk": np.asarray(chunks, np.int32), "frame": np.asarray(codes, np.uint8),
                      "score1": scores[:, 0].copy(), "score2": scores[:, 1].copy()}
            if args.keep_intermediate:
                ragged["nucleotide_embedding"] = rng.standard_normal((f, DIMS["dna"])).astype(np.float32)
                ragged["protein_embedding"] = rng.standard_normal((f, DIMS["esm"])).astype(np.float32)
            w.write(win, [Part(np.arange(len(win)), {"n_chunks": np.asarray(n_chunks, np.int32)},
                               np.asarray(n_frames, np.int64), ragged)])
        w.close()
    stamp.write_text(json.dumps(workload(args)))
    print(f"built {work}: {n:,} reads, {len(work_rows):,} computed, index {t1 - t0:.1f} s, "
          f"shards {time.perf_counter() - t1:.1f} s")


def child(work: Path, out: Path, keep: bool) -> None:
    """In a fresh interpreter (the ``src`` on PYTHONPATH): the engine's finalize of the predict task, timed."""
    from virnucdist.data.runindex import load_run_index
    from virnucdist.engine import loop

    t0 = time.perf_counter()
    index = load_run_index(work)
    out.mkdir(parents=True)
    (out / "shards").symlink_to(work / "shards")
    source = np.asarray(index.representatives(), dtype=np.int64)
    empty = np.asarray(index.length) == 0
    task = make_task(work, out, keep)
    t1 = time.perf_counter()
    counts = loop._finalize(task, out, index, source, empty, index.fingerprint)
    t2 = time.perf_counter()
    (out / "shards").unlink()
    counts.pop("samples", None)
    import virnucdist

    print(json.dumps({"finalize_s": t2 - t1, "load_s": t1 - t0, "counts": counts, "module": virnucdist.__file__}))


def _h5_digest(path: Path) -> str:
    """An HDF5 file's content: every dataset (name, dtype, shape, values) and attribute. Not its bytes:
    where HDF5 puts variable-length strings depends on how many writes stored them."""
    import h5py

    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                v = obj[()]
                h.update(f"{name} {obj.dtype} {obj.shape}".encode())
                h.update(b"\n".join(x if isinstance(x, bytes) else str(x).encode() for x in v.ravel())
                         if v.dtype.kind in "OSU" else np.ascontiguousarray(v).tobytes())
        f.visititems(visit)
        h.update(repr(sorted((k, str(v)) for k, v in f.attrs.items())).encode())
    return "h5:" + h.hexdigest()


def hashes(out: Path) -> dict:
    """sha256 of each output file's bytes (an HDF5 file: of its content, :func:`_h5_digest`)."""
    return {p.name: _h5_digest(p) if p.suffix == ".h5" else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.iterdir()) if p.is_file()}


def timed(src: Path, work: Path, out: Path, keep: bool) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, __file__, "--child", str(work), str(out)] + (["--keep-intermediate"] if keep else [])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"finalize with {src} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["hashes"] = hashes(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reads", type=int, default=1_000_000)
    ap.add_argument("--paired", action="store_true", help="R1 and R2 files (reads/2 each): pair_summary.tsv too")
    ap.add_argument("--dup", type=float, default=0.0, help="fraction of reads that copy an earlier read")
    ap.add_argument("--empty", type=float, default=0.0, help="fraction of empty reads")
    ap.add_argument("--ranks", type=int, default=1, help="shards (ranks) the results are spread over")
    ap.add_argument("--keep-intermediate", action="store_true", help="also the stage files and frame embeddings")
    ap.add_argument("--smoke", action="store_true", help="3000 reads, duplicates, empty reads, pairs, 2 ranks, "
                                                         "--keep-intermediate: seconds on CPU")
    ap.add_argument("--baseline-src", default=None, help="another checkout's src/ (e.g. main before a change)")
    ap.add_argument("--repeat", type=int, default=1, help="time each checkout this many times (best kept)")
    ap.add_argument("--workdir", default=None, help="default: /tmp/vnd-predict-finalize-<reads>")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(Path(args.child[0]), Path(args.child[1]), args.keep_intermediate)
    if args.smoke:
        args.reads, args.paired, args.dup, args.empty, args.ranks = 3000, True, 0.1, 0.01, 2
        args.keep_intermediate = True
    work = Path(args.workdir or f"/tmp/vnd-predict-finalize-{args.reads}{'-smoke' if args.smoke else ''}")
    sys.path.insert(0, str(REPO / "src"))
    build(work, args)
    runs = {"new": REPO / "src"}
    if args.baseline_src:
        runs["baseline"] = Path(args.baseline_src).resolve()
    res: dict = {"workload": workload(args), "workdir": str(work)}
    for rep in range(args.repeat):
        for name, src in runs.items():
            r = timed(src, work, work / f"out-{name}", args.keep_intermediate)
            if name not in res or r["finalize_s"] < res[name]["finalize_s"]:
                res[name] = {**r, "src": str(src)}
    n = args.reads
    for name in runs:
        s = res[name]["finalize_s"]
        print(f"{name:9s} finalize {s:8.2f} s  {n / s:12,.0f} reads/s  ({res[name]['module']})")
    if "baseline" in res:
        a, b = res["new"]["hashes"], res["baseline"]["hashes"]
        same = a == b
        res["identical"] = same
        res["speedup"] = res["baseline"]["finalize_s"] / res["new"]["finalize_s"]
        print(f"speed-up {res['speedup']:.2f}x; output files {'IDENTICAL' if same else 'DIFFER'}: {', '.join(sorted(a))}")
        if not same:
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    print(f"  differs: {k}")
    print(f"counts: {json.dumps(res['new']['counts'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if "identical" in res and not res["identical"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
