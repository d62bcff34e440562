"""The VirNucPro prediction job behind ``torchrun ... -m virnucdist.predict``, in one pass.

Every rank: load (rank 0 builds) the index of the READS, skip reads already in
the run's shards, take its share (balanced by read length, which is what frame
tokens grow with) and go through it in blocks of reads. A DataLoader worker
turns a block into scored-ready work: read -> chunk -> six-frame translate ->
tokenize each kept frame's protein (ESM-2) and nucleotide record (DNABERT-S)
-> paired packed batches (the same frames in the same order on both sides).
The main loop embeds both sides, concatenates (DNABERT-S 768, ESM-2 2560) in
fp32, runs the MLP and appends softmax scores to this rank's shard, a whole
block of reads at a time. Rank 0 then writes VirNucPro's outputs in input order
(``prediction_results.txt``, ``prediction_results_highestscore.csv``), a per-read
``read_summary.tsv`` and ``run_report.json``; with ``--keep-intermediate`` also
the stage files (chunks, frames) and both models' frame embeddings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import __version__
from .engine import (
    DTYPES,
    BatchRunner,
    check_manifest,
    prepare_output_dir,
    resolve_dtype,
    run_job,
    to_host_async,
)
from .errors import UserError
from .fasta import write_fasta
from .launch.dist import DistContext, init_distributed
from .launch.logs import setup_logging
from .models.classifier import (
    MLPClassifier,
    classifier_chunk_size_hint,
    check_input_dim,
    load_classifier,
)
from .models.loading import LoadedModel, load_model
from .models.tokenization import SequenceTokenizer
from .packing import PackedBatch, pack_token_arrays
from .progress import Progress, index_progress
from .sharding.index import SequenceIndex, build_index_distributed
from .sharding.partition import partition
from .telemetry import Telemetry, format_summary, write_run_report
from .vnp.chunk import chunk_id, chunk_records, chunk_spans
from .vnp.consensus import (
    ReadFrames,
    chunk_of,
    consensus,
    write_consensus,
    write_predictions,
    write_read_summary,
)
from .vnp.translate import six_frame, translate_records
from .writers import STR, PredictionShardWriter, open_prediction_shards

__all__ = ["PredictConfig", "PredictModels", "PredictResult", "predict", "main", "load_predict_models",
           "make_block", "pack_pairs", "plan_blocks", "finalize_predictions"]

log = logging.getLogger("virnucdist")

DEFAULT_TOKS = {"cpu": 4096, "cuda": 65536}
CHUNK_SIZES = (300, 500)
DNABERT_DIM, ESM_DIM = 768, 2560  # the classifier's input: concat(DNABERT-S, ESM-2 3B)
BLOCK_BATCHES = 32  # a block holds at most this many batch budgets of bases: the last batch of a block is
# partial, so a block must span many batches to keep packing high (a base gives 0.2-2 protein tokens)
FINALIZE_WINDOW = 1 << 20  # reads per window when rank 0 writes the outputs

OUTPUTS = ["shards", "prediction_results.txt", "prediction_results_highestscore.csv", "read_summary.tsv",
           "run_report.json", "chunked.fa", "identified_nucleotide.fa", "identified_protein.faa",
           "nucleotide_embeddings.h5", "protein_embeddings.h5"]


@dataclass(frozen=True)
class PredictConfig:
    """One prediction run; CLI flags map 1:1 to these fields."""

    inputs: tuple[str, ...]
    chunk_size: int
    classifier: str
    esm_model: str
    dnabert_model: str
    output_dir: str
    random_init: bool = False  # seeded random weights for BOTH models (tests, demos)
    seed: int = 0
    toks_per_batch: int | None = None  # ESM-2 tokens per batch (DNABERT-S gets the same); None: per device
    dtype: str | None = None  # None: bf16 on CUDA, fp32 on CPU (the classifier always runs in fp32)
    device: str | None = None
    num_workers: int = 2
    reads_per_block: int | None = None  # None: blocks of BLOCK_BATCHES x toks_per_batch bases
    keep_intermediate: bool = False
    overwrite: bool = False
    quiet: bool = False


@dataclass
class PredictModels:
    """Already loaded models (e.g. shared between runs); they must be what ``cfg`` names."""

    esm: LoadedModel
    dnabert: LoadedModel
    classifier: MLPClassifier


@dataclass
class PredictResult:
    output_dir: Path
    predictions: Path
    consensus: Path
    read_summary: Path
    counts: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- worker side


@dataclass
class PairedBatch:
    """The proteins and nucleotide records of the same frames, in the same order.

    ``protein.rows`` and ``nucleotide.rows`` are the frames' block-local indices.
    """

    protein: PackedBatch
    nucleotide: PackedBatch

    def pin_memory(self) -> "PairedBatch":
        return PairedBatch(self.protein.pin_memory(), self.nucleotide.pin_memory())


@dataclass
class Block:
    """A block of reads, translated and packed: everything the main loop needs, nothing it must remember."""

    number: int
    rows: np.ndarray  # read index positions, ascending
    n_chunks: np.ndarray  # per read (0: empty read)
    n_frames: np.ndarray  # kept frames per read
    frame_ids: list[str]  # block frames in output order (read, chunk, F1..R3)
    batches: list[PairedBatch]
    bases: int
    protein_tokens: int
    nucleotide_tokens: int
    unknown_frames: list[str] = field(default_factory=list)  # frames whose nucleotides hold [UNK] (N, IUPAC)

    @property
    def num_frames(self) -> int:
        return len(self.frame_ids)

    def pin_memory(self) -> "Block":
        return Block(self.number, self.rows, self.n_chunks, self.n_frames, self.frame_ids,
                     [b.pin_memory() for b in self.batches], self.bases, self.protein_tokens,
                     self.nucleotide_tokens, self.unknown_frames)


def pack_pairs(protein: list[np.ndarray], nucleotide: list[np.ndarray], protein_budget: int,
               nucleotide_budget: int) -> list[PairedBatch]:
    """Greedy paired packing in frame order: a batch closes when either side's budget would overflow
    (a frame over budget gets a batch of its own). ``rows`` are the frame positions."""
    batches, start, fp, fn = [], 0, 0, 0

    def close(a: int, b: int) -> None:
        rows = np.arange(a, b, dtype=np.int64)
        batches.append(PairedBatch(pack_token_arrays(protein[a:b], rows), pack_token_arrays(nucleotide[a:b], rows)))

    for i, (p, n) in enumerate(zip(protein, nucleotide)):
        if i > start and (fp + len(p) > protein_budget or fn + len(n) > nucleotide_budget):
            close(start, i)
            start, fp, fn = i, 0, 0
        fp += len(p)
        fn += len(n)
    if start < len(protein):
        close(start, len(protein))
    return batches


def make_block(number: int, rows: np.ndarray, index: SequenceIndex, chunk_size: int,
               esm_tokenizer: SequenceTokenizer, dna_tokenizer: SequenceTokenizer,
               protein_budget: int, nucleotide_budget: int) -> Block:
    """Read, chunk, translate, tokenize and pack one block of reads (pure: same input, same block)."""
    ids = index.ids
    n_chunks = np.zeros(len(rows), dtype=np.int64)
    n_frames = np.zeros(len(rows), dtype=np.int64)
    frame_ids: list[str] = []
    proteins: list[str] = []
    nucleotides: list[str] = []
    bases = 0
    for j, row in enumerate(rows.tolist()):
        seq = index.read(row)
        bases += len(seq)
        spans = chunk_spans(len(seq), chunk_size)
        n_chunks[j] = len(spans)
        before = len(frame_ids)
        for k, (a, b) in enumerate(spans):
            for fr in six_frame(chunk_id(ids[row], k), seq[a:b]):
                frame_ids.append(fr.id)
                proteins.append(fr.protein)
                nucleotides.append(fr.nucleotide)  # upper case (six_frame upper-cases the chunk)
        n_frames[j] = len(frame_ids) - before
    prot = [esm_tokenizer.encode(p) for p in proteins]
    batch_encode = getattr(dna_tokenizer, "encode_batch", None)
    nuc = batch_encode(nucleotides) if batch_encode and nucleotides else [dna_tokenizer.encode(s) for s in nucleotides]
    unk = getattr(dna_tokenizer, "unk_id", None)
    unknown = [f for f, t in zip(frame_ids, nuc) if unk is not None and (t == unk).any()]
    return Block(number, np.asarray(rows, dtype=np.int64), n_chunks, n_frames, frame_ids,
                 pack_pairs(prot, nuc, protein_budget, nucleotide_budget), bases,
                 sum(len(t) for t in prot), sum(len(t) for t in nuc), unknown)


class _BlockDataset(Dataset):
    def __init__(self, blocks: list[np.ndarray], index: SequenceIndex, chunk_size: int,
                 esm_tokenizer: SequenceTokenizer, dna_tokenizer: SequenceTokenizer, protein_budget: int,
                 nucleotide_budget: int):
        self.blocks, self.index, self.chunk_size = blocks, index, chunk_size
        self.tok = (esm_tokenizer, dna_tokenizer)
        self.budgets = (protein_budget, nucleotide_budget)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> Block:
        return make_block(i, self.blocks[i], self.index, self.chunk_size, *self.tok, *self.budgets)


def _as_is(x):
    return x


def plan_blocks(rows: np.ndarray, lengths: np.ndarray, reads_per_block: int, max_bases: int,
                ramp: bool = False) -> list[np.ndarray]:
    """Consecutive runs of ``rows`` with at most ``reads_per_block`` reads and (beyond one read) ``max_bases``.

    ``ramp``: the first blocks get 1/8, 1/4, 1/2 of ``max_bases``, so the GPU starts while the
    workers build the full-size ones.
    """
    blocks, start, fill = [], 0, 0
    cap = max_bases >> 3 if ramp else max_bases
    for i, n in enumerate(lengths.tolist()):
        if i > start and (i - start >= reads_per_block or fill + n > cap):
            blocks.append(rows[start:i])
            start, fill, cap = i, 0, min(max_bases, cap * 2)
        fill += n
    if start < len(rows):
        blocks.append(rows[start:])
    return blocks


# ----------------------------------------------------------------------------- run


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_identity(spec: str, random_init: bool, seed: int) -> dict:
    p = Path(spec).expanduser()
    return {"spec": str(p.resolve()) if p.exists() else spec, "random_init": random_init,
            "seed": seed if random_init else None}


def run_manifest(cfg: PredictConfig, index: SequenceIndex, dtype: torch.dtype) -> dict:
    """What must match for shards of an earlier attempt to be reused."""
    return {
        "virnucdist": __version__,
        "task": "predict",
        "input_fingerprint": index.fingerprint,
        "records": len(index),
        "chunk_size": cfg.chunk_size,
        "esm_model": _model_identity(cfg.esm_model, cfg.random_init, cfg.seed),
        "dnabert_model": _model_identity(cfg.dnabert_model, cfg.random_init, cfg.seed),
        "classifier_sha256": _file_sha256(cfg.classifier),
        "dtype": str(dtype).removeprefix("torch."),
        "keep_intermediate": cfg.keep_intermediate,
    }


def load_predict_models(cfg: PredictConfig, device: torch.device, dtype: torch.dtype) -> PredictModels:
    """ESM-2, DNABERT-S and the classifier (fp32, eval) on ``device``; checks they fit together."""
    try:
        clf = load_classifier(cfg.classifier)
    except ValueError as e:
        raise UserError(str(e)) from None
    esm = load_model(cfg.esm_model, device=device, dtype=dtype, random_init=cfg.random_init, seed=cfg.seed)
    dna = load_model(cfg.dnabert_model, device=device, dtype=dtype, random_init=cfg.random_init, seed=cfg.seed)
    if esm.molecule != "protein":
        raise UserError(f"--esm-model {cfg.esm_model} is not an ESM-2 model (it loaded as {esm.name})")
    if dna.molecule != "dna":
        raise UserError(f"--dnabert-model {cfg.dnabert_model} is not a DNABERT-S directory (it loaded as {dna.name})")
    check_input_dim(clf, (dna.dim, esm.dim), cfg.classifier)
    return PredictModels(esm, dna, clf.to(device=device, dtype=torch.float32).eval())


def _embed_all(runner: BatchRunner, batch: PackedBatch) -> torch.Tensor:
    """All of ``batch``'s embeddings in its order (the runner may split it after an OOM)."""
    outs = [out for _, out in runner(batch)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def predict(cfg: PredictConfig, ctx: DistContext | None = None, models: PredictModels | None = None) -> PredictResult:
    """Run one prediction job on this rank (call on every rank under torchrun)."""
    t_start = time.perf_counter()
    if cfg.chunk_size not in CHUNK_SIZES:
        raise UserError(f"--chunk-size must be 300 or 500 (VirNucPro's classifiers), got {cfg.chunk_size}")
    if not Path(cfg.classifier).is_file():
        raise UserError(f"classifier file {cfg.classifier} not found; pass VirNucPro's 300_model.pth or 500_model.pth")
    if cfg.reads_per_block is not None and cfg.reads_per_block < 1:
        raise UserError("--reads-per-block must be at least 1")
    ctx = ctx or init_distributed(cfg.device)
    out = prepare_output_dir(cfg.output_dir, ctx.rank, cfg.inputs)
    setup_logging(out, ctx.rank, cfg.quiet)
    tel = Telemetry(ctx.rank, ctx.device)
    hint = classifier_chunk_size_hint(cfg.classifier)
    if ctx.is_main and hint is not None and hint != cfg.chunk_size:
        log.warning("classifier %s looks trained for %d-bp chunks but --chunk-size is %d; VirNucPro pairs "
                    "300_model.pth with 300 and 500_model.pth with 500", cfg.classifier, hint, cfg.chunk_size)

    with tel.phase("index"):
        bar = index_progress(cfg.inputs, ctx.is_main and not cfg.quiet)
        index = build_index_distributed(list(cfg.inputs), out, ctx.rank, ctx.world_size, ctx.barrier, bar.advance)
        bar.close()
    dtype = resolve_dtype(cfg.dtype, ctx.device)
    manifest = run_manifest(cfg, index, dtype) if ctx.is_main else None
    err = check_manifest(out, manifest, cfg.overwrite, OUTPUTS) if ctx.is_main else None
    err = ctx.broadcast_object(err)
    if err:
        raise UserError(err)

    lengths = np.asarray(index.length, dtype=np.int64)
    empty = lengths == 0
    if ctx.is_main:
        shards = open_prediction_shards(out / "shards", len(index), index.ids)
        done = np.zeros(len(index), dtype=bool)
        for sh in shards:
            done[sh.rows] = True
    else:
        done = None
    done = ctx.broadcast_object(done)
    shares = partition(lengths, ctx.world_size, skip=done)
    mine = shares[ctx.rank]
    tel.stats.resumed_records = int(done.sum()) if ctx.is_main else 0
    if ctx.is_main:
        log.info("%d reads in %d file(s); %d already done, %d empty; %d to predict on %d rank(s), %d-bp chunks",
                 len(index), len(index.files), int(done.sum()), int(empty.sum()), sum(len(s) for s in shares),
                 ctx.world_size, cfg.chunk_size)
        if empty.any():
            log.warning("skipping %d empty read(s), e.g. %s", int(empty.sum()),
                        [index.ids[i] for i in np.flatnonzero(empty)[:3]])

    toks = cfg.toks_per_batch or DEFAULT_TOKS.get(ctx.device.type, 4096)
    packing = {"protein": 0.0, "nucleotide": 0.0}
    if len(mine):
        with tel.phase("model_load"):
            models = models or load_predict_models(cfg, ctx.device, dtype)
        _run_share(cfg, ctx, tel, index, mine, lengths, models, toks, out, packing)
    ctx.barrier()

    report: dict = {}
    counts: dict = {}
    with tel.phase("finalize", sync=False):
        if ctx.is_main:
            counts = finalize_predictions(out, index, cfg, manifest)
    stats = ctx.all_gather_object((tel.finish(), packing))
    if ctx.is_main:
        ranks = [r for r, _ in stats]
        n_unknown = sum(r.records_with_unknown_letters for r in ranks)
        if n_unknown:
            example = next(e for r in ranks for e in r.unknown_letter_examples)
            log.warning("%d frame(s) have nucleotides DNABERT-S does not know (N or IUPAC codes; embedded as [UNK], "
                        "counted in run_report.json: records_with_unknown_letters), e.g. %s", n_unknown, example)
        wall = time.perf_counter() - t_start
        report = write_run_report(out / "run_report.json", ranks, wall, {
            "task": "predict", "config": asdict(cfg), "world_size": ctx.world_size,
            "output": str(out / "prediction_results.txt"),
            "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "counts": counts,
            "skipped": {"empty_read": [index.ids[i] for i in np.flatnonzero(empty)]},
            "packing_efficiency": [{"rank": r.rank, **p} for r, p in stats],
            "units": {"sequences": "kept frames", "tokens": "ESM-2 + DNABERT-S tokens",
                      "packing_efficiency": "ESM-2 tokens / (batches x --toks-per-batch)"},
        })
        if not cfg.quiet:
            log.info("%s", format_summary(ranks, wall))
            log.info("%d reads, %d chunks, %d kept frames; reads called virus %d, others %d, no frame %d, empty %d",
                     counts["reads"], counts["chunks"], counts["frames"], counts["virus"], counts["others"],
                     counts["no_frame"], counts["empty"])
            log.info("wrote %s", out / "prediction_results.txt")
    ctx.barrier()
    return PredictResult(out, out / "prediction_results.txt", out / "prediction_results_highestscore.csv",
                         out / "read_summary.tsv", counts, report)


def _run_share(cfg, ctx, tel, index, mine, lengths, models: PredictModels, toks: int, out: Path, packing: dict):
    """This rank's reads: blocks through the workers, paired batches through both models and the MLP."""
    blocks = plan_blocks(mine, lengths[mine], cfg.reads_per_block or len(mine), BLOCK_BATCHES * toks,
                         ramp=cfg.reads_per_block is None)
    esm, dna, clf = models.esm, models.dnabert, models.classifier
    dataset = _BlockDataset(blocks, index, cfg.chunk_size, esm.tokenizer, dna.tokenizer, toks, toks)
    loader = DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=cfg.num_workers,
                        pin_memory=ctx.device.type == "cuda", prefetch_factor=2 if cfg.num_workers > 0 else None)
    keep = cfg.keep_intermediate
    writer = PredictionShardWriter(out / "shards", ctx.rank, index.ids,
                                   embedding_dims=(dna.embed_dim, esm.embed_dim) if keep else None,
                                   attrs={"chunk_size": cfg.chunk_size})
    esm_runner = BatchRunner(lambda b: esm.embed(b).pooled[0], ctx.device, tel)
    dna_runner = BatchRunner(lambda b: dna.embed(b).pooled[0], ctx.device, tel)
    progress = Progress(total_records=len(mine), total_tokens=int(lengths[mine].sum()), unit="bp", desc="predicting",
                        enabled=ctx.is_main and not cfg.quiet, world_size=ctx.world_size)
    s = tel.stats
    ptoks = ntoks = 0
    empty_reads = 0
    try:
        with torch.inference_mode(), tel.phase("inference"):
            for block in loader:
                parts, scored = [], 0
                for pb in block.batches:
                    e = _embed_all(esm_runner, pb.protein)
                    d = _embed_all(dna_runner, pb.nucleotide)
                    scores = torch.softmax(clf(torch.cat([d, e], dim=1).float()), dim=1)
                    host, ev = to_host_async(torch.cat([scores, d, e], dim=1) if keep else scores)
                    parts.append((pb.protein.rows, host, ev))
                    scored += scores.shape[0]
                    s.batches += 1
                if scored != block.num_frames or int(block.n_frames.sum()) != block.num_frames:
                    raise RuntimeError(f"block {block.number}: {block.num_frames} frames in, {scored} scored")
                writer.write_block(block.rows, block.n_chunks, block.n_frames, block.frame_ids, parts)
                s.sequences += scored
                ptoks += block.protein_tokens
                ntoks += block.nucleotide_tokens
                empty_reads += int((block.n_chunks == 0).sum())
                s.records_with_unknown_letters += len(block.unknown_frames)
                s.unknown_letter_examples += block.unknown_frames[:5 - len(s.unknown_letter_examples)]
                progress.update(len(block.rows), block.bases)
    finally:
        progress.close()
        with tel.phase("write_flush", sync=False):
            writer.close()
    s.tokens, s.toks_per_batch = ptoks + ntoks, toks
    s.skipped = {"empty_read": empty_reads}
    if s.batches:
        s.packing_efficiency = ptoks / (s.batches * toks)
        packing.update(protein=ptoks / (s.batches * toks), nucleotide=ntoks / (s.batches * toks))


# ----------------------------------------------------------------------------- finalize (rank 0)


@dataclass
class _Window:
    rows: np.ndarray  # reads of the window, input order
    n_chunks: np.ndarray
    n_frames: np.ndarray
    frames: dict  # frame columns in output order


def _owners(shards, ids: list[str]) -> np.ndarray:
    """The shard holding each read's results (the first one, should a read be in two); all reads must be."""
    owner = np.full(len(ids), -1, dtype=np.int64)
    for k in range(len(shards) - 1, -1, -1):
        owner[shards[k].rows] = k
    if (owner < 0).any():
        missing = np.flatnonzero(owner < 0)
        raise RuntimeError(f"finalize: {len(missing)} read(s) have no results (e.g. {ids[int(missing[0])]!r}); "
                           f"rerun the same command to compute them")
    return owner


def _iter_windows(shards, owner: np.ndarray, embeddings: bool, window: int) -> Iterator[_Window]:
    """The committed results in input order, ``window`` reads at a time (bounded memory)."""
    n_reads = len(owner)
    for a in range(0, n_reads, window):
        b = min(n_reads, a + window)
        parts = []
        n_chunks = np.empty(b - a, dtype=np.int64)
        n_frames = np.empty(b - a, dtype=np.int64)
        for k, sh in enumerate(shards):
            p0, p1 = np.searchsorted(sh.rows, [a, b])
            if p0 == p1:
                continue
            rows = sh.rows[p0:p1]
            mine = owner[rows] == k
            n_chunks[rows[mine] - a] = sh.n_chunks[p0:p1][mine]
            n_frames[rows[mine] - a] = sh.n_frames[p0:p1][mine]
            f = sh.frames(int(sh.frame_start[p0]), int(sh.frame_start[p1]), embeddings)
            keep = np.repeat(mine, sh.n_frames[p0:p1])
            if not keep.all():
                f = {key: v[keep] for key, v in f.items()}
            parts.append(f)
        if parts:
            frames = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
            order = np.argsort(frames["frame_rows"], kind="stable")  # a read's frames stay in their order
            frames = {key: v[order] for key, v in frames.items()}
        else:
            frames = {"frame_rows": np.zeros(0, np.int64), "frame_ids": np.zeros(0, object),
                      "score1": np.zeros(0, np.float32), "score2": np.zeros(0, np.float32)}
        yield _Window(np.arange(a, b), n_chunks, n_frames, frames)


def finalize_predictions(out: Path, index: SequenceIndex, cfg: PredictConfig, manifest: dict,
                         window: int | None = None) -> dict:
    """Rank 0: write the result files from the shards (temp names, then renamed); returns counts."""
    window = window or FINALIZE_WINDOW
    shards = open_prediction_shards(out / "shards", len(index), index.ids)
    ids = index.ids
    owner = _owners(shards, ids)

    def windows(embeddings=False):
        return _iter_windows(shards, owner, embeddings, window)

    def frame_rows():
        for w in windows():
            f = w.frames
            yield from zip(f["frame_ids"].tolist(), f["score1"].tolist(), f["score2"].tolist())

    def reads():
        for w in windows():
            f = w.frames
            fid, s1, s2 = f["frame_ids"].tolist(), f["score1"], f["score2"]
            start = 0
            for row, nc, nf in zip(w.rows.tolist(), w.n_chunks.tolist(), w.n_frames.tolist()):
                frames = tuple((chunk_of(fid[i]), s1[i], s2[i]) for i in range(start, start + nf))
                start += nf
                yield ReadFrames(ids[row], nc, frames)

    counts = {"reads": len(index), "chunks": 0, "frames": 0}
    for k, sh in enumerate(shards):
        mine = owner[sh.rows] == k
        counts["chunks"] += int(sh.n_chunks[mine].sum())
        counts["frames"] += int(sh.n_frames[mine].sum())
    _atomic(out / "prediction_results.txt", lambda p: write_predictions(p, frame_rows()))
    _atomic(out / "prediction_results_highestscore.csv", lambda p: write_consensus(p, consensus(frame_rows())))
    calls: dict = {}
    _atomic(out / "read_summary.tsv", lambda p: calls.update(write_read_summary(p, reads())))
    counts.update(calls)
    if cfg.keep_intermediate:
        _write_intermediate(out, index, cfg, manifest, windows, counts["frames"])
    return counts


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``: a reader never sees a half-written file, none is left behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _write_intermediate(out: Path, index: SequenceIndex, cfg: PredictConfig, manifest: dict, windows,
                        n_frames: int) -> None:
    """``chunked.fa``, ``identified_nucleotide.fa`` / ``identified_protein.faa`` (the stage CLI's files)
    and ``nucleotide_embeddings.h5`` / ``protein_embeddings.h5`` (embed's layout: ``ids``, ``embeddings``)."""

    def read_records():
        for i, rid in enumerate(index.ids):
            yield rid, index.read(i)

    _atomic(out / "chunked.fa", lambda p: write_fasta(p, chunk_records(read_records(), cfg.chunk_size)))

    def frames_files(tmp_nuc):
        tmp_prot = out / "identified_protein.faa.tmp"
        with open(tmp_prot, "w", newline="\n") as prot:
            def nucs():
                for fr in translate_records(chunk_records(read_records(), cfg.chunk_size)):
                    prot.write(f">{fr.id}\n{fr.protein}\n")
                    yield fr.id, fr.nucleotide
            write_fasta(tmp_nuc, nucs())
        os.replace(tmp_prot, out / "identified_protein.faa")

    _atomic(out / "identified_nucleotide.fa", frames_files)
    for key, name, dim, model in (("nucleotide_embeddings", "nucleotide_embeddings.h5", DNABERT_DIM, "dnabert_model"),
                                  ("protein_embeddings", "protein_embeddings.h5", ESM_DIM, "esm_model")):
        pooling = ("mean over all tokens incl. [CLS]/[SEP]" if key.startswith("nucleotide")
                   else "mean over residues (BOS/EOS excluded)")
        attrs = {"model": manifest[model]["spec"], "random_init": cfg.random_init, "dtype": manifest["dtype"],
                 "pooling": pooling, "virnucdist_version": __version__, "input_fingerprint": index.fingerprint,
                 "chunk_size": cfg.chunk_size, "inputs": json.dumps([str(p) for p in cfg.inputs])}

        def write_h5(tmp, key=key, dim=dim, attrs=attrs):
            with h5py.File(tmp, "w") as f:
                ids_ds = f.create_dataset("ids", (n_frames,), dtype=STR)
                emb = f.create_dataset("embeddings", (n_frames, dim), dtype="f4",
                                       chunks=(max(1, min(n_frames, 4096)), dim) if n_frames else None)
                at = 0
                for w in windows(embeddings=True):
                    n = len(w.frames["frame_ids"])
                    if n:
                        ids_ds[at:at + n] = w.frames["frame_ids"].tolist()
                        emb[at:at + n] = w.frames[key]
                    at += n
                f.attrs.update(attrs)

        _atomic(out / name, write_h5)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m virnucdist.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="reads: FASTA file(s), plain or .gz")
    p.add_argument("--chunk-size", type=int, choices=CHUNK_SIZES, required=True,
                   help="chunk length; must match the classifier (300_model.pth -> 300, 500_model.pth -> 500)")
    p.add_argument("--classifier", required=True, help="VirNucPro's 300_model.pth / 500_model.pth (or a state dict)")
    p.add_argument("--esm-model", required=True, help="ESM-2 name (esm2_t36_3B_UR50D) or fair-esm .pt path")
    p.add_argument("--dnabert-model", required=True, help="DNABERT-S directory (or 'dnabert-s' with --random-init)")
    p.add_argument("-o", "--output-dir", required=True)
    p.add_argument("--random-init", action="store_true", help="seeded random weights for both models (tests, demos)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toks-per-batch", type=int, default=None,
                   help=f"ESM-2 tokens per packed batch, DNABERT-S the same (default {DEFAULT_TOKS})")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes per rank")
    p.add_argument("--reads-per-block", type=int, default=None,
                   help=f"reads per worker block, the unit of resume (default: blocks of about {BLOCK_BATCHES} "
                        f"batches, i.e. {BLOCK_BATCHES} x --toks-per-batch bases)")
    p.add_argument("--keep-intermediate", action="store_true",
                   help="also write chunked.fa, identified_*.fa(a) and both models' frame embeddings (.h5)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run of other inputs/settings")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), PredictConfig, predict, argv)

