"""The VirNucPro task behind ``torchrun ... -m virnucdist.predict``: reads in, virus calls out, one pass.

A DataLoader worker turns a window of reads into paired batches: read -> chunks
(VirNucPro's rule) -> six-frame translation (frames with a stop are dropped) ->
each kept frame's protein (ESM-2) and nucleotides (DNABERT-S), packed so that both
sides hold the same frames in the same order. On the device both models embed a
batch, the features are concatenated (DNABERT-S, ESM-2) in fp32 and the MLP gives
two softmax scores per frame. A read's result is its chunk count and its frames
(chunk, frame, scores). Rank 0 then writes VirNucPro's files in input order
(``prediction_results.txt``, ``prediction_results_highestscore.csv``), a per-read
``read_summary.tsv`` and, with ``--keep-intermediate``, both models' frame embeddings.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..engine import RunConfig, RunResult, add_run_arguments, run, run_main
from ..engine.config import numerics, torch_dtype
from ..data.inputs import InputFile, as_inputs
from ..data.samples import read_sheet
from ..errors import UserError
from ..launch.dist import DistContext
from ..models.classifier import classifier_chunk_size_hint, load_classifier
from ..models.fp8 import to_fp8
from ..models.loading import load_model
from ..packing import pack_pairs
from ..engine.runner import BatchRunner, to_host_async
from ..vnp.chunk import chunk_id, chunk_spans, window_spans
from ..vnp.genbank import annotated_frame
from ..vnp.outputs import ReadBlock, atomic, write_frame_embeddings, write_result_files, write_stage_files
from ..vnp.translate import FRAME_NAMES, six_frame
from ..writers import Column, Part, ShardSchema
from ..engine.task import Block, RunPlan
from .tiles import tile_for, tiled_embed, tiled_rows
from .identity import check_model_roles, check_model_spec, model_identity, width_of_spec

__all__ = ["PredictConfig", "PredictTask", "SamplesPredictTask", "make_task", "predict", "build_parser", "main"]

CHUNK_SIZES = (300, 500)  # VirNucPro's own classifiers; a trained one may use any size
MIN_CHUNK = 3
FINALIZE_WINDOW = 1 << 16  # reads per window when rank 0 reads the results back
_CODE = {name: i for i, name in enumerate(FRAME_NAMES)}


@dataclass(frozen=True, kw_only=True)
class PredictConfig(RunConfig):
    """One prediction run: the shared :class:`~virnucdist.engine.RunConfig` fields and these; CLI flags map 1:1.

    ``toks_per_batch`` is ESM-2's tokens per batch (DNABERT-S gets the same); ``random_init`` gives both
    models (and, without ``classifier``, the classifier) seeded random weights; the classifier always runs
    in fp32 whatever the ``dtype``.
    """

    chunk_size: int
    esm_model: str
    dnabert_model: str
    classifier: str | None = None  # None only with --random-init: a seeded random MLP sized to the models
    keep_intermediate: bool = False
    reproducible: bool = False  # the same bytes whatever the world size, budget, resume point (tasks/tiles.py)
    samples: str | None = None  # a sample sheet (SamplesPredictTask below): its files replace ``inputs``


@dataclass
class _MakePredictBlock:
    """Worker side: chunk, translate, tokenize and pair-pack one window of reads (pure).

    ``step``: None cuts VirNucPro's chunks of ``chunk_size``; a step cuts sliding windows of
    ``chunk_size`` every ``step`` bases instead (``virnucdist train --window W --step S``).
    ``annotated``: the reads are coding sequences; keep only the frame that reads their codons."""

    chunk_size: int
    esm_tokenizer: object
    dna_tokenizer: object
    budget: int
    step: int | None = None
    annotated: bool = False  # keep only the forward frame reading a CDS's codons (train --frames annotated)

    def __call__(self, index, number: int, rows: np.ndarray) -> Block:
        n_chunks = np.zeros(len(rows), dtype=np.int32)
        n_frames = np.zeros(len(rows), dtype=np.int64)
        chunks, codes, proteins, nucleotides = [], [], [], []
        for j, row in enumerate(rows.tolist()):
            seq = index.read(row).upper().replace("U", "T")  # RNA reads are read as DNA
            spans = (chunk_spans(len(seq), self.chunk_size) if self.step is None
                     else window_spans(len(seq), self.chunk_size, self.step))
            n_chunks[j] = len(spans)
            for k, (a, b) in enumerate(spans):
                for fr in six_frame("", seq[a:b]):
                    if self.annotated and fr.id[-2:] != annotated_frame(a):
                        continue
                    chunks.append(k)
                    codes.append(_CODE[fr.id[-2:]])
                    proteins.append(fr.protein)
                    nucleotides.append(fr.nucleotide)
                    n_frames[j] += 1
        prot = [self.esm_tokenizer.encode(p) for p in proteins]
        nuc = self.dna_tokenizer.encode_batch(nucleotides) if nucleotides else []
        unk = getattr(self.dna_tokenizer, "unk_id", None)
        unknown = [i for i, t in enumerate(nuc) if unk is not None and (t == unk).any()]  # frames with N / IUPAC
        batches = pack_pairs(prot, nuc, self.budget, self.budget)
        ptok, ntok = sum(len(t) for t in prot), sum(len(t) for t in nuc)
        counters = {"chunks": int(n_chunks.sum()), "frames": len(prot), "packed_tokens": ptok,
                    "packed_capacity": sum(max(self.budget, b.protein.num_tokens) for b in batches)}
        examples = {}
        if unknown:
            frame_read = np.repeat(rows, n_frames)
            counters["unknown_letters"] = len(unknown)
            examples["unknown_letters"] = [f"{chunk_id(index.ids[int(frame_read[i])], chunks[i])}{FRAME_NAMES[codes[i]]}"
                                           for i in unknown[:5]]
        payload = (n_chunks, n_frames, np.asarray(chunks, np.int32), np.asarray(codes, np.uint8))
        return Block(number, np.asarray(rows, dtype=np.int64), batches, ptok + ntok, counters, examples, payload)


class PredictTask:
    """VirNucPro's prediction as one pass; see the module docstring."""

    name, verb, cost_unit = "predict", "predicting", "bp"
    outputs = ("prediction_results.txt", "prediction_results_highestscore.csv", "read_summary.tsv",
               "nucleotide_embeddings.h5", "protein_embeddings.h5", "chunked.fa", "identified_nucleotide.fa",
               "identified_protein.faa", "pair_summary.tsv")
    dedup = True

    def __init__(self, config: PredictConfig):
        c = config
        if c.chunk_size < MIN_CHUNK:
            raise UserError(f"--chunk-size must be at least {MIN_CHUNK} bases (a codon per frame); got {c.chunk_size}. "
                            f"VirNucPro's classifiers take 300 or 500; a classifier from `virnucdist train` the "
                            f"chunk size it was trained at")
        if c.classifier is None and not c.random_init:
            raise UserError("--classifier is required: VirNucPro's 300_model.pth or 500_model.pth "
                            "(only --random-init runs without one, with a random classifier)")
        if c.classifier is not None and not Path(c.classifier).is_file():
            raise UserError(f"classifier file {c.classifier} not found; pass VirNucPro's 300_model.pth or 500_model.pth")
        if c.interleaved and not c.samples:
            c = replace(c, inputs=tuple(as_inputs(c.inputs, interleaved=True)))
        self.config, self.runners = c, []
        check_model_roles(c.esm_model, c.dnabert_model)  # before the widths: a swapped model is not a width problem
        widths = (width_of_spec(c.dnabert_model, c.random_init), width_of_spec(c.esm_model, c.random_init))
        if c.classifier is not None and None not in widths:  # before any indexing: the models' widths are known
            load_classifier(c.classifier, expected_input_dim=widths)

    def identity(self) -> dict:
        c = self.config
        clf = hashlib.sha256(Path(c.classifier).read_bytes()).hexdigest() if c.classifier else f"random({c.seed})"
        return {"chunk_size": c.chunk_size, "esm_model": model_identity(c.esm_model, c.random_init, c.seed),
                "dnabert_model": model_identity(c.dnabert_model, c.random_init, c.seed), "classifier_sha256": clf,
                "keep_intermediate": c.keep_intermediate, **({"reproducible": True} if c.reproducible else {})}

    def check(self, index) -> None:
        check_model_spec(self.config.esm_model, "--esm-model")
        check_model_spec(self.config.dnabert_model, "--dnabert-model")
        if not self.config.allow_any_molecule:
            from ..data.alphabet import check_molecule

            # RNA reads (U) are read as DNA (U as T), as the README says: both are accepted
            check_molecule(index, "nucleotide", "VirNucPro predict (reads)", "--allow-any-molecule")

    def prepare(self, ctx: DistContext, index) -> None:
        c = self.config
        dtype = torch_dtype(c.dtype)  # self.config is resolved: dtype, toks_per_batch, ... are what runs
        load = dict(device=ctx.device, dtype=dtype, random_init=c.random_init, seed=c.seed)
        self.esm, self.dna = load_model(c.esm_model, **load), load_model(c.dnabert_model, **load)
        if c.dtype == "fp8":  # ESM-2's layer GEMMs in e4m3; DNABERT-S stays bf16
            self.esm.module = to_fp8(self.esm.module, c.fp8_policy)  # resolved: fast accumulation too
        if self.esm.molecule != "protein" or self.dna.molecule != "dna":
            raise UserError(f"--esm-model must be ESM-2 and --dnabert-model DNABERT-S (got {self.esm.name}, "
                            f"{self.dna.name})")
        dim = self.dna.dim + self.esm.dim
        if c.classifier is None:  # --random-init demo: a seeded random MLP sized to these models
            from ..models.random_init import random_classifier

            clf = random_classifier(dim, c.seed)
            if ctx.is_main:
                logging.getLogger("virnucdist").warning(
                    "classifier: RANDOM WEIGHTS (seed %d, %d inputs): a demo; the calls mean nothing", c.seed, dim)
        else:
            clf = load_classifier(c.classifier, expected_input_dim=(self.dna.dim, self.esm.dim))
            hint = classifier_chunk_size_hint(c.classifier)
            if ctx.is_main and hint is not None and hint != c.chunk_size:
                logging.getLogger("virnucdist").warning(
                    "classifier %s looks trained for %d-bp chunks but --chunk-size is %d; VirNucPro pairs "
                    "300_model.pth with 300 and 500_model.pth with 500 (a trained one: the length in its metrics.json)", c.classifier, hint, c.chunk_size)
        self.clf = clf.to(device=ctx.device, dtype=torch.float32).eval()
        self.budget = c.toks_per_batch
        self.models = [self.esm, self.dna]
        if c.reproducible:  # batches packed to one fixed tile, padded to it; per-sequence attention and pooling
            tile = self.budget = tile_for(ctx.device)
            self.runners = [BatchRunner(lambda b, m=m: tiled_embed(m, b, (-1,), False, tile).pooled[0], ctx.device)
                            for m in self.models]
        else:
            self.runners = [BatchRunner(lambda b, m=m: m.embed(b, (-1,), False).pooled[0], ctx.device)
                            for m in self.models]

    def costs(self, index) -> np.ndarray:
        return np.asarray(index.length, dtype=np.int64) + 1  # frame tokens grow with the bases

    def schema(self) -> ShardSchema:
        ragged = [Column("chunk", "i4"), Column("frame", "u1"), Column("score1", "f4"), Column("score2", "f4")]
        if self.config.keep_intermediate:
            ragged += [Column("nucleotide_embedding", "f4", (self.dna.dim,)),
                       Column("protein_embedding", "f4", (self.esm.dim,))]
        return ShardSchema("predict", (Column("n_chunks", "i4"),), tuple(ragged), {"chunk_size": self.config.chunk_size})

    def block_maker(self):
        return _MakePredictBlock(self.config.chunk_size, self.esm.tokenizer, self.dna.tokenizer, self.budget)

    def _embed(self, runner: BatchRunner, batch, dim: int) -> torch.Tensor:
        outs = [o if o is not None else torch.full((p.num_seqs, dim), float("nan"), device=runner.device)
                for p, o in runner(batch)]  # a lone frame out of memory: NaN, its read becomes a counted skip
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def run_block(self, block: Block) -> list[Part]:
        n_chunks, n_frames, chunks, codes = block.payload
        out = []
        for pb in block.batches:
            e = self._embed(self.runners[0], pb.protein, self.esm.dim)
            d = self._embed(self.runners[1], pb.nucleotide, self.dna.dim)
            feats = torch.cat([d, e], dim=1).float()
            logits = tiled_rows(self.clf, feats) if self.config.reproducible else self.clf(feats)
            scores = torch.softmax(logits, dim=1)
            out.append(torch.cat([scores, d.float(), e.float()], 1) if self.config.keep_intermediate else scores)
        width = 2 + (self.dna.dim + self.esm.dim if self.config.keep_intermediate else 0)
        vals = torch.cat(out) if out else torch.zeros(0, width, device=self.clf.hidden_layer.weight.device)
        (host,), ev = to_host_async(vals)
        ragged = {"chunk": chunks, "frame": codes, "score1": host[:, 0], "score2": host[:, 1]}
        if self.config.keep_intermediate:
            ragged["nucleotide_embedding"] = host[:, 2:2 + self.dna.dim]
            ragged["protein_embedding"] = host[:, 2 + self.dna.dim:]
        return [Part(np.arange(len(block.rows)), {"n_chunks": n_chunks}, n_frames, ragged, ev)]

    # -- rank 0
    def finalize(self, out: Path, index, results, plan: RunPlan) -> dict:
        return self.write_outputs(out, index, results, plan, 0, len(index))

    def write_outputs(self, out: Path, index, results, plan: RunPlan, lo: int, hi: int) -> dict:
        """The result files of the reads ``lo:hi`` of the index (all of them, or one sample's) into ``out``."""
        ids, mate = index.ids, np.asarray(index.mate)
        sel = (plan.rows >= lo) & (plan.rows < hi)

        def blocks():
            """The reads as ReadBlocks, input order; reads without a result (empty, skipped) have no chunk."""
            at = lo
            for w in results.windows(plan.rows[sel], plan.source[sel], ragged=True, window=FINALIZE_WINDOW):
                if not len(w.rows):
                    continue
                end = int(w.rows[-1]) + 1
                fstart = np.zeros(len(w.rows) + 1, dtype=np.int64)
                np.cumsum(w.lengths, out=fstart[1:])
                for a in range(at, end, 4 * FINALIZE_WINDOW):  # a window over long runs of empty reads: in pieces
                    b = min(end, a + 4 * FINALIZE_WINDOW)
                    i0, i1 = np.searchsorted(w.rows, [a, b]).tolist()
                    yield _read_block(ids, mate, a, b, w, i0, i1, fstart)
                at = end
            for a in range(at, hi, 4 * FINALIZE_WINDOW):
                yield _read_block(ids, mate, a, min(hi, a + 4 * FINALIZE_WINDOW))

        counts = {"reads": hi - lo, **write_result_files(out, blocks, paired=bool(mate[lo:hi].any()))}
        unpaired = counts.get("pairs", {}).get("unpaired_mates", 0)
        if unpaired:  # e.g. a BAM or a filtered file that lost one read of some pairs
            logging.getLogger("virnucdist").warning(
                "%s: %d mate(s) without their other mate in the input: each has its line in read_summary.tsv but "
                "none in pair_summary.tsv (run_report.json: counts.pairs.unpaired_mates)", out, unpaired)
        if self.config.keep_intermediate:
            def records():
                for a in range(lo, hi, FINALIZE_WINDOW):
                    b = min(hi, a + FINALIZE_WINDOW)
                    yield from zip(ids[a:b], (index.read(i) for i in range(a, b)))

            write_stage_files(out, records, self.config.chunk_size)
            for key, model in (("nucleotide_embedding", self.dna), ("protein_embedding", self.esm)):
                write_frame_embeddings(out / f"{key}s.h5", blocks, counts["frames"], model.dim,
                                       lambda b, key=key: b.extra[0].ragged[key][b.extra[1]],
                                       {"model": model.name, "input_fingerprint": plan.fingerprint,
                                        "chunk_size": self.config.chunk_size, **numerics(self.config, hdf5=True)})
        return counts


def _read_block(ids, mate, a: int, b: int, w=None, i0: int = 0, i1: int = 0, fstart=None) -> ReadBlock:
    """Reads ``a:b`` of the index as a ReadBlock: the results ``i0:i1`` of window ``w`` (rows in ``a:b``);
    the other reads have none."""
    n_chunks, n_frames = np.zeros(b - a, dtype=np.int64), np.zeros(b - a, dtype=np.int64)
    if w is None or i1 == i0:
        none = np.zeros(0, dtype=np.int64)
        return ReadBlock(ids[a:b], n_chunks, n_frames, none, none, none.astype(np.float32),
                         none.astype(np.float32), mate[a:b])
    pos = w.rows[i0:i1] - a
    n_chunks[pos] = w.columns["n_chunks"][i0:i1]
    n_frames[pos] = w.lengths[i0:i1]
    fs = slice(int(fstart[i0]), int(fstart[i1]))
    return ReadBlock(ids[a:b], n_chunks, n_frames, w.ragged["chunk"][fs], w.ragged["frame"][fs],
                     w.ragged["score1"][fs], w.ragged["score2"][fs], mate[a:b], (w, fs))


# ----------------------------------------------------------------------------- every sample of a sheet
# Every sample of a sequencing run in one prediction launch (``predict --samples SHEET.tsv``).
# 
# The sheet (:mod:`virnucdist.data.samples`) becomes the run's inputs: each file an
# :class:`~virnucdist.data.inputs.InputFile` carrying its sample (and, for the two files of a pair,
# its mate), in sheet order. So one index covers every sample (every file is scanned before any
# model loads: one bad file stops the run in one line naming the sample, the file and the record),
# one token-balanced partition spans them all, the models load once, and the engine's dedup
# computes a read that occurs in several samples once. Resume after a kill is the engine's, for
# the whole sheet; the sheet (sample names and their files) is part of the run's identity, so a
# changed sheet is another run (refused without ``--overwrite``).
# 
# Rank 0 then writes, per sample, ``OUTDIR/<sample>/`` with the files a single-sample run of that
# sample writes (the same writer over the sample's reads), and ``OUTDIR/samples.tsv``, one line
# per sample: ``sample reads pairs reads_virus pairs_virus viral_fraction skipped``
# (viral_fraction = reads_virus / reads; skipped = empty reads and reads skipped for a reason,
# e.g. out of memory, as listed in run_report.json).


SAMPLES_HEADER = ("sample", "reads", "pairs", "reads_virus", "pairs_virus", "viral_fraction", "skipped")


class SampleInputError(UserError):
    """An input error of one sample of a sheet (the message names the sample)."""


class SamplesPredictTask(PredictTask):
    """Predict over every sample of a sheet; see the module docstring."""

    def __init__(self, config: PredictConfig):
        if config.inputs:
            raise UserError("give the reads either as files or with --samples SHEET, not both")
        self.sheet = read_sheet(config.samples)
        inputs = tuple(InputFile(os.path.abspath(f), sample=s.name, mate=k + 1 if s.paired_files else None,
                                 interleaved=config.interleaved and not s.paired_files)
                       for s in self.sheet for k, f in enumerate(s.files))
        super().__init__(replace(config, inputs=inputs))
        self.outputs = ("samples.tsv", *(s.name for s in self.sheet), *PredictTask.outputs)

    def identity(self) -> dict:
        return {**super().identity(), "samples": [[s.name, len(s.files)] for s in self.sheet]}

    def explain(self, err: UserError) -> UserError:
        """An input error names the sample whose file it is about."""
        msg = str(err)
        named = [(len(f), s) for s in self.sheet for f in s.files if f in msg]
        if not named:
            return err
        s = max(named, key=lambda x: x[0])[1]  # the longest path named: /a/s1.fq.gz, not /a/s1.fq
        return SampleInputError(f"sample {s.name!r} (sheet {self.config.samples}, line {s.line}): {msg}")

    def finalize(self, out: Path, index, results, plan: RunPlan) -> dict:
        names = [s.name for s in self.sheet]
        if list(index.samples) != names:
            raise RuntimeError(f"the index's samples {index.samples} are not the sheet's {names}")
        sample = np.asarray(index.sample)
        bounds = np.searchsorted(sample, np.arange(len(names) + 1), side="left")
        empty, bad = np.asarray(plan.empty, dtype=np.int64), np.asarray(sorted(plan.bad), dtype=np.int64)
        lines, per_sample = [], {}
        for k, name in enumerate(names):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            (out / name).mkdir(exist_ok=True)
            c = self.write_outputs(out / name, index, results, plan, lo, hi)
            pairs = c.get("pairs", {"pairs": 0, "virus": 0})
            skipped = int(((empty >= lo) & (empty < hi)).sum() + ((bad >= lo) & (bad < hi)).sum())
            frac = c["virus"] / c["reads"] if c["reads"] else 0.0
            lines.append(f"{name}\t{c['reads']}\t{pairs['pairs']}\t{c['virus']}\t{pairs['virus']}\t{frac:.6f}\t{skipped}")
            per_sample[name] = c
        text = "\t".join(SAMPLES_HEADER) + "\n" + "".join(ln + "\n" for ln in lines)
        atomic(out / "samples.tsv", lambda p: p.write_text(text))
        totals = {key: sum(c[key] for c in per_sample.values()) for key in ("reads", "frames", "virus", "others",
                                                                            "no_frame", "empty")}
        return {**totals, "samples": per_sample}


def make_task(cfg: PredictConfig):
    """The task of a run: one set of reads, or every sample of a sheet (``--samples``)."""
    if cfg.samples:
        return SamplesPredictTask(cfg)
    if not cfg.inputs:
        raise UserError("no input files given: pass the reads (FASTA/FASTQ/BAM, R1 R2 for a pair) or --samples SHEET")
    return PredictTask(cfg)


def predict(cfg: PredictConfig, ctx: DistContext | None = None) -> RunResult:
    """Run one prediction job on this rank (call on every rank under torchrun)."""
    return run(make_task(cfg), ctx)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m virnucdist.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, inputs_help="reads: FASTA or FASTQ file(s), plain or .gz; R1 R2 of a pair", inputs_nargs="*", records="reads",
                      dtype_help="the classifier always runs in fp32; fp8: ESM-2 in FP8",
                      random_init_help="seeded RANDOM weights for both models and, without --classifier, "
                                       "the classifier (demos)")
    p.add_argument("--samples", default=None, metavar="SHEET.tsv",
                   help="every sample of a sequencing run in one launch: name<TAB>R1[<TAB>R2] per line; "
                        "outputs in OUTDIR/<sample>/ and OUTDIR/samples.tsv")
    p.add_argument("--chunk-size", type=int, required=True,
                   help="chunk length; must match the classifier (300_model.pth -> 300, 500_model.pth -> 500, "
                        "a classifier from `virnucdist train`: its --chunk-size / --window)")
    p.add_argument("--classifier", default=None, help="VirNucPro's 300_model.pth / 500_model.pth (or a state dict)")
    p.add_argument("--esm-model", required=True,
                   help="ESM-2: a name (esm2_t36_3B_UR50D), fair-esm .pt, Hugging Face directory or cached hub id; "
                        "its width must match the classifier's (VirNucPro's: 3B)")
    p.add_argument("--dnabert-model", required=True, help="DNABERT-S directory (or 'dnabert-s' with --random-init)")
    p.add_argument("--keep-intermediate", action="store_true",
                   help="also write chunked.fa, identified_*.fa(a) and both models' frame embeddings (.h5)")
    p.add_argument("--reproducible", action="store_true",
                   help="the same bytes whatever the world size, --toks-per-batch, resume point or batch neighbours "
                        "(same device kind and torch version); slower (README: Reproducibility)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), PredictConfig, make_task, argv)
