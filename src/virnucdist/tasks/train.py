"""The task behind ``torchrun ... -m virnucdist.train``: a VirNucPro classifier for your reads and your ESM-2.

Labelled input is FASTA/FASTQ files per class (``--viral``, ``--other``: genomes, contigs or
reads). On the engine, like predict (the same worker code): each sequence is cut into
VirNucPro's chunks of ``--chunk-size`` or into sliding windows (``--window W --step S``),
six-frame translated by predict's rules (frames with a stop are dropped), and every kept frame
is embedded by DNABERT-S and the chosen ESM-2 (dedup, token balance over ranks, resume from the
shards). Rank 0 then trains VirNucPro's MLP on the merged features (:mod:`virnucdist.vnp.training`)
and writes ``classifier.pth`` (VirNucPro's pickled-module form), ``training_log.tsv`` and
``metrics.json``.

Frames: VirNucPro trained on the ONE frame of each chunk that matches the GenBank protein
annotation. By default every stop-free frame of a chunk is a training row labelled with its file's
class, exactly the frames predict will score; no annotation is needed. ``--frames annotated``
takes coding sequences (``virnucdist cds FILE.gbff``) and keeps VirNucPro's frame only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..engine import RunConfig, RunResult, add_run_arguments, run, run_main
from ..engine.config import torch_dtype
from ..engine.runner import BatchRunner, to_host_async
from ..data.inputs import InputFile
from ..engine.task import RunPlan
from ..errors import UserError
from ..launch.dist import DistContext
from ..models.loading import load_model
from ..vnp.training import (EpochLog, Recipe, balance_mask, chunk_metrics, save_virnucpro_classifier,
                            split_groups, train_classifier)
from ..writers import Column, Part, ShardSchema
from .identity import check_model_roles, model_identity
from .predict import MIN_CHUNK, PredictTask, _MakePredictBlock

__all__ = ["TrainConfig", "TrainTask", "train", "build_parser", "main"]

log = logging.getLogger("virnucdist")
FEATURE_WINDOW = 1 << 14  # records per window when rank 0 reads the features back
WAITING_RANKS_MINUTES = 50.0  # training limit when other ranks wait (the process group times out after 60)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """One training run: the shared :class:`~virnucdist.engine.RunConfig` fields and these; CLI flags map 1:1
    (the recipe's are :class:`Recipe`'s). ``inputs`` is set from the files: ``viral``, then ``other``."""

    viral: tuple[str, ...]
    other: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    esm_model: str
    dnabert_model: str
    chunk_size: int | None = None  # VirNucPro's chunking at this length ...
    window: int | None = None  # ... or sliding windows of this length
    step: int | None = None  # every this many bases (default: window // 2)
    split_by: str = "chunk"  # what stays together across the train/held-out split: chunk | record
    frames: str = "all"  # all stop-free frames (as predict scores) | annotated (inputs are CDS: their own frame)
    balance_classes: bool = False  # draw whole chunks of the larger class down to the smaller class's frames
    max_train_minutes: float | None = None  # no new epoch after this; None: no limit on 1 rank, 50 on several
    # VirNucPro's train.py recipe
    hidden_dim: int = Recipe.hidden_dim
    dropout: float = Recipe.dropout
    lr: float = Recipe.lr
    momentum: float = Recipe.momentum
    step_size: int = Recipe.step_size
    gamma: float = Recipe.gamma
    batch_size: int = Recipe.batch_size
    max_epochs: int = Recipe.max_epochs
    patience: int = Recipe.patience
    val_fraction: float = Recipe.val_fraction
    split_seed: int = Recipe.split_seed
    train_seed: int = Recipe.seed

    def __post_init__(self):
        # one sample per class: a viral and an other file are never taken for the two files of a read pair
        # (their ids may coincide, e.g. simulated reads), and ids need to be unique within a class only
        object.__setattr__(self, "inputs", (*(InputFile(os.path.abspath(p), sample="viral") for p in self.viral),
                                            *(InputFile(os.path.abspath(p), sample="other") for p in self.other)))

    @property
    def piece(self) -> int:
        return self.window if self.window is not None else self.chunk_size

    def recipe(self) -> Recipe:
        names = {f.name for f in fields(Recipe)}
        vals = {k: getattr(self, k) for k in names if k != "seed"}
        return Recipe(**vals, seed=self.train_seed)


class TrainTask(PredictTask):
    """Predict's chunk/translate/embed pass with the features as the result; training in finalize."""

    name, verb, cost_unit = "train", "embedding", "bp"
    outputs = ("classifier.pth", "training_log.tsv", "metrics.json")
    dedup = True

    def __init__(self, config: TrainConfig):
        c = config
        if not c.viral or not c.other:
            raise UserError("train needs labelled sequences of both classes: --viral FILE... and --other FILE...")
        if (c.chunk_size is None) == (c.window is None):
            raise UserError("give one of --chunk-size N (VirNucPro's chunks) or --window N [--step S] "
                            "(sliding windows)")
        if c.step is not None and c.window is None:
            raise UserError("--step goes with --window (sliding windows); --chunk-size cuts VirNucPro's chunks")
        if c.piece < MIN_CHUNK:
            raise UserError(f"--chunk-size / --window must be at least {MIN_CHUNK} bases, got {c.piece}")
        if c.step is not None and c.step < 1:
            raise UserError(f"--step must be at least 1, got {c.step}")
        if c.frames not in ("all", "annotated"):
            raise UserError(f"--frames must be 'all' or 'annotated', got {c.frames!r}")
        if c.split_by not in ("chunk", "record"):
            raise UserError(f"--split-by must be 'chunk' or 'record', got {c.split_by!r}")
        c.recipe().check()
        if c.max_train_minutes is not None and not c.max_train_minutes > 0:
            raise UserError(f"training settings out of range: --max-train-minutes {c.max_train_minutes} (> 0)")
        viral = {os.path.realpath(p): p for p in map(str, c.viral)}  # ./x.fa, /abs/x.fa, a link: one file
        overlap = [p for p in map(str, c.other) if os.path.realpath(p) in viral]
        if overlap:
            raise UserError(f"{overlap[0]} is given as both --viral and --other")
        check_model_roles(c.esm_model, c.dnabert_model)
        self.config, self.runners = c, []

    @property
    def step(self) -> int | None:
        c = self.config
        return None if c.window is None else (c.step or max(1, c.window // 2))

    def identity(self) -> dict:
        c = self.config
        return {"chunk_size": c.chunk_size, "window": c.window, "step": self.step, "viral_files": len(c.viral),
                "esm_model": model_identity(c.esm_model, c.random_init, c.seed),
                "dnabert_model": model_identity(c.dnabert_model, c.random_init, c.seed),
                "split_by": c.split_by, "frames": c.frames, "balance_classes": c.balance_classes,
                "recipe": vars(c.recipe())}

    def prepare(self, ctx: DistContext, index) -> None:
        c = self.config
        dtype = torch_dtype(c.dtype)  # self.config is resolved: dtype, toks_per_batch, ... are what runs
        load = dict(device=ctx.device, dtype=dtype, random_init=c.random_init, seed=c.seed)
        self.esm, self.dna = load_model(c.esm_model, **load), load_model(c.dnabert_model, **load)
        if self.esm.molecule != "protein" or self.dna.molecule != "dna":
            raise UserError(f"--esm-model must be ESM-2 and --dnabert-model DNABERT-S (got {self.esm.name}, "
                            f"{self.dna.name})")
        self.device = ctx.device
        self.world_size = ctx.world_size
        self.budget = c.toks_per_batch
        self.models = [self.esm, self.dna]
        self.runners = [BatchRunner(lambda b, m=m: m.embed(b, (-1,), False).pooled[0], ctx.device) for m in self.models]

    def schema(self) -> ShardSchema:
        dim = self.dna.dim + self.esm.dim
        ragged = (Column("chunk", "i4"), Column("frame", "u1"), Column("features", "f4", (dim,)))
        return ShardSchema("train", (Column("n_chunks", "i4"),), ragged,
                           {"piece": self.config.piece, "step": self.step or 0, "frames": self.config.frames})

    def block_maker(self):
        return _MakePredictBlock(self.config.piece, self.esm.tokenizer, self.dna.tokenizer, self.budget, self.step,
                                 self.config.frames == "annotated")

    def run_block(self, block) -> list[Part]:
        n_chunks, n_frames, chunks, codes = block.payload
        out = [torch.cat([self._embed(self.runners[1], pb.nucleotide, self.dna.dim),
                          self._embed(self.runners[0], pb.protein, self.esm.dim)], dim=1).float()
               for pb in block.batches]
        vals = torch.cat(out) if out else torch.zeros(0, self.dna.dim + self.esm.dim, device=self.device)
        (host,), ev = to_host_async(vals)
        return [Part(np.arange(len(block.rows)), {"n_chunks": n_chunks}, n_frames,
                     {"chunk": chunks, "frame": codes, "features": host}, ev)]

    # -- rank 0
    def _features(self, index, results, plan: RunPlan):
        """All frames' features, labels (1 = viral file) and split groups, input order."""
        n_viral = len(self.config.viral)
        is_viral = np.asarray(index.file_idx) < n_viral
        feats, labels, chunks = [], [], []
        for w in results.windows(plan.rows, plan.source, ragged=True, window=FEATURE_WINDOW):
            nf = np.asarray(w.lengths, dtype=np.int64)
            frame_row = np.repeat(w.rows, nf)
            keep = np.isfinite(w.ragged["features"]).all(axis=1)  # a lone frame out of memory is NaN: dropped
            feats.append(np.asarray(w.ragged["features"])[keep])
            labels.append(is_viral[frame_row][keep])
            chunks.append((frame_row.astype(np.int64) * (1 << 32) + w.ragged["chunk"])[keep])
        dim = self.dna.dim + self.esm.dim
        cat = (lambda xs, dt, shape=(0,): np.concatenate(xs) if xs else np.zeros(shape, dt))
        chunk = cat(chunks, np.int64)
        groups = chunk >> 32 if self.config.split_by == "record" else chunk
        return cat(feats, np.float32, (0, dim)), cat(labels, bool), groups, chunk

    def finalize(self, out: Path, index, results, plan: RunPlan) -> dict:
        x, y, groups, chunk = self._features(index, results, plan)
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        if n_pos == 0 or n_neg == 0:
            raise UserError(f"no stop-free frames of {'viral' if n_pos == 0 else 'other'} sequences to train on "
                            f"({n_pos} viral, {n_neg} other frames): check --viral / --other and the piece length")
        recipe = self.config.recipe()
        if self.config.balance_classes:
            keep = balance_mask(y, groups, recipe.split_seed)
            log.info("--balance-classes: %d of %d frames kept (%d viral, %d other before)", int(keep.sum()), len(y),
                     n_pos, n_neg)
            x, y, groups, chunk = x[keep], y[keep], groups[keep], chunk[keep]
            n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        held = split_groups(groups, recipe.val_fraction, recipe.split_seed)
        held_pos = int(y[held].sum())
        held_neg = int(held.sum()) - held_pos
        if not held_pos or not held_neg:  # a random split of chunks (VirNucPro's) can leave out a small class
            log.warning("the held-out set (%d frames) holds no %s frames: its precision, recall and AUROC are not "
                        "defined; give more %s sequences or a larger --val-fraction", int(held.sum()),
                        *(["viral"] * 2 if not held_pos else ["other"] * 2))
        quiet = self.config.quiet
        log.info("training VirNucPro's MLP on %d frames (%d viral, %d other; %d held out), %d features per frame",
                 len(y), n_pos, n_neg, int(held.sum()), x.shape[1])
        rows: list[str] = ["\t".join(EpochLog.HEADER)]
        tsv = out / "training_log.tsv"

        def on_epoch(e: EpochLog) -> None:
            rows.append(e.row())
            tmp = tsv.with_name(tsv.name + ".tmp")
            tmp.write_text("\n".join(rows) + "\n")
            tmp.replace(tsv)
            if not quiet:
                log.info("epoch %d: train loss %.4f acc %.4f | held-out loss %.4f acc %.4f | lr %.3g",
                         e.epoch, e.train_loss, e.train_accuracy, e.val_loss, e.val_accuracy, e.lr)

        minutes = self.config.max_train_minutes
        if minutes is None and self.world_size > 1:  # the other ranks wait in a collective (1-hour timeout)
            minutes = WAITING_RANKS_MINUTES
        model, epochs, metrics = train_classifier(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), held,
                                                  recipe, self.device, on_epoch,
                                                  None if minutes is None else 60.0 * minutes)
        if metrics["stopped_by"] == "time_limit":
            log.warning("training stopped after %d epochs: the %.0f-minute limit (--max-train-minutes; with several "
                        "ranks the others wait for rank 0); the best epoch's weights are kept", len(epochs), minutes)
        save_virnucpro_classifier(model, out / "classifier.pth")
        with torch.no_grad():  # VirNucPro's per-chunk decision (max over frames) on the held-out chunks
            p = torch.softmax(model(torch.from_numpy(x[held])), 1)[:, 1].numpy()
        metrics["per_chunk"] = chunk_metrics(y[held], p, chunk[held])
        c = self.config
        metrics.update({
            "frames": int(len(y)), "viral_frames": n_pos, "other_frames": n_neg, "input_dim": int(x.shape[1]),
            "held_out_viral_frames": held_pos, "held_out_other_frames": held_neg,
            "dnabert_dim": self.dna.dim, "esm_dim": self.esm.dim, "esm_model": self.esm.name,
            "dnabert_model": self.dna.name, "random_weights": bool(c.random_init),
            "pieces": {"chunk_size": c.chunk_size, "window": c.window, "step": self.step},
            "split_by": c.split_by, "frame_rule": c.frames, "balance_classes": c.balance_classes,
            "recipe": vars(recipe),
            "predict_with": f"--chunk-size {c.piece} --esm-model {c.esm_model} --dnabert-model {c.dnabert_model}",
        })
        tmp = out / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        tmp.replace(out / "metrics.json")
        if not quiet:
            log.info("held-out: accuracy %.4f, precision %.4f, recall %.4f, f1 %.4f, auroc %s (best epoch %d of %d)",
                     metrics["accuracy"], metrics["precision"], metrics["recall"], metrics["f1"],
                     "n/a" if metrics["auroc"] is None else f"{metrics['auroc']:.4f}", metrics["best_epoch"],
                     metrics["epochs_run"])
        return {"frames": int(len(y)), "epochs": len(epochs), "auroc": metrics["auroc"]}


def train(cfg: TrainConfig, ctx: DistContext | None = None) -> RunResult:
    """Embed and train on this rank (call on every rank under torchrun); rank 0 trains and writes."""
    return run(TrainTask(cfg), ctx)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m virnucdist.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--viral", nargs="+", required=True, help="viral sequences: FASTA/FASTQ file(s), plain or .gz")
    p.add_argument("--other", nargs="+", required=True, help="non-viral (host, bacterial ...) sequences")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--chunk-size", type=int, default=None, help="VirNucPro's chunks of this length (any, e.g. 150)")
    g.add_argument("--window", type=int, default=None, help="sliding windows of this length ...")
    p.add_argument("--step", type=int, default=None, help="... every STEP bases (default window/2)")
    p.add_argument("--esm-model", required=True,
                   help="ESM-2: name, fair-esm .pt, Hugging Face directory or cached hub id")
    p.add_argument("--dnabert-model", required=True, help="DNABERT-S directory (or 'dnabert-s' with --random-init)")
    p.add_argument("--split-by", choices=("chunk", "record"), default="chunk",
                   help="held-out unit: a chunk/window's frames stay together (default), or a whole input record's")
    p.add_argument("--balance-classes", action="store_true",
                   help="train on as many frames of each class: whole chunks of the larger class drawn at random")
    p.add_argument("--max-train-minutes", type=float, default=None,
                   help=f"start no epoch after this (default: none on one rank, {WAITING_RANKS_MINUTES:.0f} with "
                        f"several: the others wait within the process group's one-hour timeout)")
    p.add_argument("--frames", choices=("all", "annotated"), default="all",
                   help="all: every stop-free frame (the frames predict scores; default); annotated: the inputs are "
                        "coding sequences (virnucdist cds FILE.gbff) and each chunk keeps the frame of its codons, "
                        "VirNucPro's choice")
    add_run_arguments(p, inputs_help=None, random_init_help="seeded RANDOM model weights (tests, demos, benchmarks)")
    r = p.add_argument_group("training recipe (defaults: VirNucPro's train.py)")
    d = Recipe()
    for name, typ, what in (("hidden_dim", int, "hidden units"), ("dropout", float, "dropout"),
                            ("lr", float, "SGD learning rate"), ("momentum", float, "SGD momentum"),
                            ("step_size", int, "StepLR step (epochs)"), ("gamma", float, "StepLR factor"),
                            ("batch_size", int, "batch size"), ("max_epochs", int, "most epochs"),
                            ("patience", int, "early stopping: epochs without a better held-out loss"),
                            ("val_fraction", float, "held-out fraction"), ("split_seed", int, "seed of the split")):
        r.add_argument(f"--{name.replace('_', '-')}", type=typ, default=getattr(d, name),
                       help=f"{what} (default {getattr(d, name)})")
    r.add_argument("--train-seed", type=int, default=d.seed, help=f"seed of the MLP's weights and batches "
                                                                  f"(default {d.seed})")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), TrainConfig, TrainTask, argv)
