"""Every sample of a sequencing run in one prediction launch (``predict --samples SHEET.tsv``).

The sheet (:mod:`virnucdist.data.samples`) becomes the run's inputs: each file an
:class:`~virnucdist.data.inputs.InputFile` carrying its sample (and, for the two files of a pair,
its mate), in sheet order. So one index covers every sample (every file is scanned before any
model loads: one bad file stops the run in one line naming the sample, the file and the record),
one token-balanced partition spans them all, the models load once, and the engine's dedup
computes a read that occurs in several samples once. Resume after a kill is the engine's, for
the whole sheet; the sheet (sample names and their files) is part of the run's identity, so a
changed sheet is another run (refused without ``--overwrite``).

Rank 0 then writes, per sample, ``OUTDIR/<sample>/`` with the files a single-sample run of that
sample writes (the same writer over the sample's reads), and ``OUTDIR/samples.tsv``, one line
per sample: ``sample reads pairs reads_virus pairs_virus viral_fraction skipped``
(viral_fraction = reads_virus / reads; skipped = empty reads and reads skipped for a reason,
e.g. out of memory, as listed in run_report.json).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..data.inputs import InputFile
from ..data.samples import read_sheet
from ..engine.task import RunPlan
from ..errors import UserError
from ..vnp.outputs import atomic
from .predict import PredictConfig, PredictTask

__all__ = ["SamplesPredictTask", "SAMPLES_HEADER"]

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
