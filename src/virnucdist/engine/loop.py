"""The rank loop: one engine for every task (embed, predict, a user's own).

On every rank, in this order::

    run directory + manifest (rank 0; no side effect before the run is accepted)
      -> index (rank 0 builds or reuses OUTDIR/index, every rank memory-maps it: data.runindex)
      -> resume scan of the shards, dedup (one computation per distinct sequence)
      -> partition (rank 0, engine.plan): one contiguous, token-balanced run per rank; every other
         rank reads just its own run from OUTDIR/plan (its memory grows with its share)
      -> windows of that run -> DataLoader workers make blocks (task.block_maker)
      -> task.run_block on the device -> ShardWriter (each window committed in input order)
      -> barrier -> rank 0: task.finalize from the shards -> run report -> shards removed

A task (see :mod:`virnucdist.engine.task`) says what is specific to it; everything
else, resume, balance, durability, progress and reporting, is written once here.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._version import __version__
from .._testhooks import active_test_hooks, test_hook
from ..errors import Interrupted, PeerFailed, UserError
from ..launch.dist import DistContext, init_distributed, worker_dies_with_rank
from ..launch.logs import setup_logging
from ..progress import Progress, index_progress
from ..data.index import SequenceIndex
from ..data.runindex import check_input_files, load_run_index, open_run_index
from ..sharding.partition import plan_windows
from .config import NUMERICS, config_from_args, numerics, resolve
from .lock import RunLock
from .plan import PLAN_DIR, Plan, Share, make_plan, read_share, share_of, write_shares
from .task import Block, Counters, RunPlan, Task
from ..telemetry import Telemetry, _rss_gb, format_summary, write_run_report
from ..writers.durable import DiskFullError, _is_disk_full
from ..writers import Results, ShardWriter, replace_durably, scan_shards

__all__ = ["run", "run_main", "RunResult", "WINDOW_BATCHES"]

log = logging.getLogger("virnucdist")

WINDOW_BATCHES = 32  # a window holds about this many batch budgets of tokens: packing stays high inside it
MIN_WINDOW_BATCHES = 4  # ... and at least this many when windows shrink so that every worker gets some


def window_cost(total: int, toks: int, workers: int) -> int:
    """Tokens per window: ``WINDOW_BATCHES`` budgets, but small enough that the rank's ``total`` makes two
    windows per loader worker (never under ``MIN_WINDOW_BATCHES`` budgets). Windows are tokenised one per
    worker: 1M DNABERT-S reads at 32 budgets of 262,144 made 7 windows, so 7 of 14 workers tokenised and
    the GPU waited on the 210k-read ones."""
    cost = WINDOW_BATCHES * toks
    if workers > 1:
        cost = max(MIN_WINDOW_BATCHES * toks, min(cost, total // (2 * workers)))
    return cost
MANIFEST = "run.json"


@dataclass
class RunResult:
    """What a run left: ``output`` is the task's main file (e.g. ``embeddings.h5``)."""

    output_dir: Path
    output: Path
    report: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    already_complete: bool = False


# ----------------------------------------------------------------------------- the run directory (rank 0)


def _check_inputs(inputs) -> None:
    check_input_files(inputs)  # one line: missing, a directory, a pipe or stream


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror}); choose another with -o") from None


def _remove(paths) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def _open_run(task: Task, out: Path, progress: bool) -> dict:
    """Rank 0: accept or refuse the run before touching anything an earlier run left.

    Returns ``{"complete": bool, "fingerprint": str}``; raises UserError to refuse. A refused run
    leaves every file of the earlier run as it was (a new index is saved only once accepted).
    """
    cfg = task.config
    inputs = [p if hasattr(p, "path") else str(p) for p in cfg.inputs]  # paths or data.inputs.InputFile
    path = out / MANIFEST
    old = json.loads(path.read_text()) if path.exists() else None
    run_index = open_run_index(out, inputs, progress=lambda paths: index_progress(paths, progress),
                               interleaved=cfg.interleaved)
    ref = run_index.index
    manifest = {"virnucdist": __version__, "task": task.name, "input_fingerprint": ref.fingerprint,
                "records": len(ref), **task.identity(), **numerics(cfg)}
    outputs = [out / n for n in (*task.outputs, "shards", PLAN_DIR, "run_report.json", "report.html")]
    if old is None and not cfg.overwrite:  # files no run of ours made (no run.json): never overwritten
        foreign = [n for n in task.outputs if (out / n).exists()]
        if foreign:
            raise UserError(f"{out / foreign[0]} exists but {out} holds no run.json (no virnucdist run made it); "
                            f"use another output directory, or --overwrite to replace it")
    if old is not None:
        changed = [k for k in manifest if k != "virnucdist" and old.get(k) != manifest[k]]
        if changed and not cfg.overwrite:
            raise UserError(f"{out} holds a run with a different {', '.join(_said(k, old, manifest) for k in changed)}"
                            f"; use another output directory, or --overwrite to discard it")
        if not changed and old.get("complete") and all((out / n).exists() for n in task.outputs[:1]):
            return {"complete": True, "fingerprint": ref.fingerprint}
        if changed:  # also an earlier sample sheet's folders and samples.tsv (names checked when it ran)
            sheet = old.get("samples") or []
            earlier = [out / n for n in (str(s[0]) for s in sheet if isinstance(s, list) and s)
                       if "/" not in n and n not in ("", ".", "..")] + ([out / "samples.tsv"] if sheet else [])
            _remove(outputs + earlier + [path])
            run_index.discard()  # saved again below
    if not (np.asarray(ref.length) > 0).any():
        raise UserError(f"{', '.join(str(getattr(p, 'path', p)) for p in cfg.inputs)}: no sequences to {task.name}: {len(ref)} record(s), all "
                        f"empty (header lines only); check the input file")
    task.check(ref)
    run_index.commit()
    _write_manifest(out, {**manifest, "resolved": json.loads(json.dumps(_plain(cfg), default=str)), "complete": False})
    return {"complete": False, "fingerprint": ref.fingerprint}


def _said(key: str, old: dict, new: dict) -> str:
    """A changed manifest key for the refusal: with both values when they are short (``dtype (fp32 -> bf16)``)."""
    a, b = old.get(key, "unset"), new[key]
    if key in NUMERICS or (isinstance(a, (str, int, float, bool)) and isinstance(b, (str, int, float, bool))
                           and len(str(a)) + len(str(b)) < 40):
        return f"{key} ({a} -> {b})"
    return key


def _write_manifest(out: Path, manifest: dict) -> None:
    """``run.json``: written aside, then a durable rename (data and directory fsync'd)."""
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    replace_durably(tmp, out / MANIFEST)


def _mark_complete(out: Path) -> None:
    _write_manifest(out, {**json.loads((out / MANIFEST).read_text()), "complete": True})


def _agree(ctx: DistContext, fn, *args):
    """Rank 0 runs ``fn``; every rank gets its result, or raises its user error (one message everywhere)."""
    result, err, user = None, None, True
    if ctx.is_main:
        try:
            result = fn(*args)
        except UserError as e:  # rank 0 raises the error itself (its type intact), the peers its message
            ctx.broadcast_object((None, str(e), True))
            raise
        except BaseException as e:  # a bug or an OS error: rank 0 raises it, the peers stop quietly
            err, user = f"{type(e).__name__}: {e}", False
            if not ctx.distributed:
                raise
            ctx.broadcast_object((None, err, user))
            raise
    result, err, user = ctx.broadcast_object((result, err, user))
    if err is not None:
        raise UserError(err) if user else PeerFailed(f"rank 0 failed: {err}")
    return result


# ----------------------------------------------------------------------------- the loop


class _Windows(Dataset):
    """DataLoader items: one window of records -> one Block (made in a worker process)."""

    def __init__(self, windows: list[np.ndarray], index: SequenceIndex, make):
        self.windows, self.index, self.make = windows, index, make

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Block:
        block = self.make(self.index, i, self.windows[i])
        if not np.array_equal(block.rows, self.windows[i]):
            raise RuntimeError(f"window {i}: the task's block holds other records than planned")
        return block


def _as_is(x):
    return x


def run(task: Task, ctx: DistContext | None = None) -> RunResult:
    """Run ``task`` on this rank (call on every rank under torchrun); rank 0 writes the final files."""
    t_start = time.perf_counter()
    ctx = ctx or init_distributed(task.config.device)
    out = Path(task.config.output_dir)
    setup_logging(None, ctx.rank, task.config.quiet)
    _check_inputs(task.config.inputs)
    # the defaults become what runs here (dtype, token budget, ...), before any work or manifest; e.g.
    # --dtype fp8 on a GPU without FP8 is refused here in one line
    cfg = task.config = resolve(task.config, ctx.device)
    if ctx.is_main:
        _writable(out)
    held: list[RunLock] = []  # rank 0 holds the directory for the whole job; a second launch is refused here
    _agree(ctx, lambda: held.append(RunLock(out).acquire()))
    try:
        return _run_locked(task, ctx, cfg, out, t_start)
    finally:
        for lock in held:
            lock.release()


def _run_locked(task: Task, ctx: DistContext, cfg, out: Path, t_start: float) -> RunResult:
    try:
        opened = _agree(ctx, _open_run, task, out, ctx.is_main and not cfg.quiet)
    except UserError as e:  # a task may say more (e.g. which sample of a sheet holds the bad file)
        explain = getattr(task, "explain", None)
        if explain is None:
            raise
        raise explain(e) from None
    open_s = time.perf_counter() - t_start  # arguments, run directory, index built or loaded, manifest
    setup_logging(out, ctx.rank, cfg.quiet)
    if opened["complete"]:
        if ctx.is_main:
            log.info("%s is complete for this input and these settings; nothing to do (--overwrite redoes it)", out)
        ctx.barrier()
        return RunResult(out, out / task.outputs[0], already_complete=True)
    fingerprint = opened["fingerprint"]
    tel = Telemetry(ctx.rank, ctx.device)
    with tel.phase("index", sync=False):
        index = load_run_index(out)
    n = len(index)

    # what is already done: rank 0 scans the shards (and sets aside unreadable ones) and keeps the mask
    held: dict = {}

    def scan0() -> dict:
        held.update(_scan(out, n, fingerprint))
        return {"corrupt": held["corrupt"]}

    scan = _agree(ctx, scan0)
    scan["done"] = held.get("done")  # rank 0 only
    try:
        return _compute(task, ctx, out, index, scan, fingerprint, tel, t_start, open_s)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the writers are closed by now
        raise _interrupted(e, ctx, out, n, fingerprint) from None
    except DiskFullError as e:  # rank 0 says the job's count (every rank's committed records), never one rank's
        if ctx.is_main and getattr(e, "safe", None) is None:
            try:
                e.safe = scan_shards(out / "shards", n, fingerprint=fingerprint, quarantine=False).n_done
            except (OSError, ValueError):
                pass
        raise


def _interrupted(e: KeyboardInterrupt, ctx: DistContext, out: Path, n: int, fingerprint: str) -> Interrupted:
    """The interrupt, with what its message counts as safe (rank 0: every rank's committed records, on disk)."""
    if isinstance(e, Interrupted) or not ctx.is_main:
        return e if isinstance(e, Interrupted) else Interrupted(str(e))
    try:
        return Interrupted(str(e), safe=scan_shards(out / "shards", n, fingerprint=fingerprint, quarantine=False).n_done)
    except Exception:  # noqa: BLE001 - the message must not turn into a crash
        return Interrupted(str(e))


def _compute(task: Task, ctx: DistContext, out: Path, index, scan: dict, fingerprint: str, tel: Telemetry,
             t_start: float, open_s: float) -> RunResult:
    """After the run is opened: partition, the loop over this rank's windows, rank 0's final files."""
    cfg, n = task.config, len(index)
    with tel.phase("model_load"):  # every rank: costs come from the task's tokenizer
        task.prepare(ctx, index)
    if ctx.is_main:
        for m in getattr(task, "models", ()):
            if m.attrs.get("warning"):  # e.g. RANDOM WEIGHTS: loud, every run
                log.warning("%s: %s", m.name, m.attrs["warning"])
    use_dedup = task.dedup and cfg.dedup
    planned: list[Plan] = []  # rank 0: the whole plan (finalize and the report need it)
    summary = _agree(ctx, _plan, task, ctx, out, index, scan, use_dedup, planned)
    if ctx.is_main:  # rank 0 keeps what finalize needs (source, empty), not the costs and the runs
        plan = planned.pop()
        share, source, empty = share_of(plan, 0), plan.source, plan.empty
        del plan
    else:
        share, source, empty = read_share(out, ctx.rank), None, None
    rss = _rss_gb()
    tel.stats.rss_after_plan_gb = None if rss is None else round(rss, 3)

    toks = cfg.toks_per_batch
    counters = Counters()
    if not share.done.all():
        _loop(task, ctx, tel, index, share, toks, out, fingerprint, counters)
    else:
        tel.stats.toks_per_batch = toks
    tel.stats.resumed_records = summary["done"] if ctx.is_main else 0
    ctx.barrier()

    # rank 0: the final files from the shards
    report: dict = {}
    counts: dict = {}
    all_counters = ctx.all_gather_object(counters)
    merged = Counters().merge(all_counters)
    with tel.phase("finalize", sync=False):
        if ctx.is_main:
            try:
                counts = _finalize(task, out, index, source, empty, fingerprint)
            except (OSError, RuntimeError) as e:
                if not _is_disk_full(e):
                    raise
                raise DiskFullError(f"no space left on {out} while writing the final files; free space and rerun "
                                    f"the same command: every record is computed and safe in the shards, the rerun "
                                    f"only writes the final files") from None
    stats = ctx.all_gather_object(tel.finish())
    if ctx.is_main:
        wall = time.perf_counter() - t_start
        served, distinct = summary["served"], summary["distinct"]
        report = write_run_report(out / "run_report.json", stats, wall, {
            "task": task.name, "config": _plain(cfg), "world_size": ctx.world_size, "output_dir": str(out),
            "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "open_s": round(open_s, 4),
            "records": n, "counts": counts, "counters": merged.counts, "examples": merged.examples,
            "dedup": {"enabled": use_dedup, "distinct": distinct, "served_from_duplicate": served},
            "skipped": {"empty": [index.ids[i] for i in np.flatnonzero(empty)[:1000]],
                        **({"empty_samples": [index.samples[int(index.sample[i])] for i in np.flatnonzero(empty)[:1000]]}
                           if len(index.samples) > 1 else {}),
                        "empty_count": summary["empty"],
                        **{reason: ids for reason, ids in counts.get("bad", {}).items()}},
            "test_hooks": active_test_hooks(),
            **(task.report_extra() if hasattr(task, "report_extra") else {}),
        })
        _warn(merged, index, task)
        _mark_complete(out)  # first: a kill between the two leaves spare shards, never a run to redo
        if not cfg.keep_shards:
            _remove([out / "shards", out / "inputs"])
        _remove([out / PLAN_DIR])
        if not cfg.quiet:
            log.info("%s", format_summary(stats, wall))
            if served:
                log.info("dedup: %d records served from %d distinct sequences", served, distinct)
            log.info("wrote %s", ", ".join(str(out / name) for name in task.outputs[:3]))
    ctx.barrier()
    return RunResult(out, out / task.outputs[0], report, counts)


def _scan(out: Path, n: int, fingerprint: str) -> dict:
    try:
        scan = scan_shards(out / "shards", n, fingerprint=fingerprint)
    except ValueError as e:  # shards of another input
        raise UserError(str(e)) from None
    return {"done": scan.done, "bad": dict(zip(scan.bad_rows.tolist(), scan.bad_reasons)), "corrupt": len(scan.corrupt)}


def _shown(index, row: int) -> str:
    """A record for a message: its id, and its sample when the index holds several (ids repeat across them)."""
    rid = repr(index.ids[row])
    return rid if len(index.samples) <= 1 else f"{rid} (sample {index.samples[int(index.sample[row])]})"


def _plan(task: Task, ctx: DistContext, out: Path, index, scan: dict, use_dedup: bool, planned: list) -> dict:
    """Rank 0: costs, dedup and the partition of the whole index; each other rank's run to OUTDIR/plan.
    Returns the counts every rank may log (a small dict)."""
    n = len(index)
    costs = np.asarray(task.costs(index), dtype=np.int64)
    source = np.asarray(index.representatives(), dtype=np.int64) if use_dedup else np.arange(n, dtype=np.int64)
    empty = np.asarray(index.length) == 0
    done = scan["done"]
    plan = make_plan(costs, source, empty, done, ctx.world_size)
    write_shares(out, plan)
    planned.append(plan)
    summary = plan.counts
    log.info("%d records in %d file(s): %d distinct non-empty, %d served from a duplicate, %d empty; %d already "
             "done; %d to compute on %d rank(s)", n, len(index.files), summary["distinct"], summary["served"],
             summary["empty"], summary["done_first"], summary["work"], ctx.world_size)
    if summary["empty"]:
        log.warning("skipping %d empty record(s), e.g. %s (listed in run_report.json)", summary["empty"],
                    ", ".join(_shown(index, int(i)) for i in np.flatnonzero(empty)[:3]))
    if scan["corrupt"]:
        log.warning("set aside %d unreadable shard(s) (killed mid-write); their records are redone", scan["corrupt"])
    return summary


def _loop(task, ctx, tel, index, share: Share, toks, out, fingerprint, counters) -> None:
    """This rank's share: windows through the workers, blocks through the task, results to the shard.

    The windows are planned over the whole ``share`` (done or not); a window whose records are all
    ``done`` is skipped, one partly done (a resume at another world size or budget) is computed whole
    and only its records not yet on disk are committed.
    """
    cfg = task.config
    per_window = cfg.window_records  # None: windows by tokens, ramped up at the start
    workers = cfg.num_workers
    costs, done = share.costs, share.done
    planned = plan_windows(np.arange(len(share.rows)), costs, window_cost(int(costs.sum()), toks, workers),
                           max_rows=per_window, ramp=per_window is None)  # positions in the share
    windows = [share.rows[p] for p in planned if not done[p].all()]
    if ctx.is_main:
        log.info("%d loader worker(s) per rank", workers)
    loader = DataLoader(_Windows(windows, index, task.block_maker()), batch_size=None, collate_fn=_as_is,
                        num_workers=workers, pin_memory=ctx.device.type == "cuda",
                        prefetch_factor=2 if workers > 0 else None, worker_init_fn=functools.partial(worker_dies_with_rank, rank_pid=os.getpid()))
    writer = ShardWriter(out / "shards", ctx.rank, task.schema(), fingerprint=fingerprint,
                         flush_every=cfg.flush_every)
    progress = Progress(total_records=int((~done).sum()), total_tokens=int(costs[~done].sum()),
                        enabled=ctx.is_main and not cfg.quiet, world_size=ctx.world_size,
                        desc=getattr(task, "verb", task.name), unit=getattr(task, "cost_unit", "tok"))
    s = tel.stats
    s.toks_per_batch = toks
    def on_tokens(n: int) -> None:  # per forward: tokens into the timeline, O(1), no device sync
        tel.first_batch()  # the first forward launched ends start-up (a no-op afterwards)
        tel.count(0, n)

    for r in task.runners:
        r.on_tokens = on_tokens
    blocks = 0
    try:
        with torch.inference_mode(), tel.phase("inference"):
            for block in loader:
                at = share.positions(block.rows)
                todo = ~done[at]
                writer.write(block.rows, task.run_block(block), keep=None if todo.all() else todo)
                fresh = block.rows[todo]
                blocks += 1
                s.sequences += len(fresh)
                s.tokens += block.tokens
                tel.count(len(fresh), 0)  # the report's timeline (tokens come per forward: on_tokens)
                s.batches += len(block.batches)
                counters.add(block.counters, block.examples)
                progress.update(len(fresh), int(costs[at[todo]].sum()))
                test_hook("batch", rank=ctx.rank, batches=blocks)  # test-only fault injection
    finally:
        progress.close()
        with tel.phase("write_flush", sync=False):
            writer.close()
    c = counters.counts
    s.planned_tokens = int(costs[~done].sum())
    s.truncated = c.get("truncated", 0)
    s.records_with_unknown_letters = c.get("unknown_letters", 0)
    s.unknown_letter_examples = counters.examples.get("unknown_letters", [])
    if c.get("packed_capacity"):
        s.packing_efficiency = c.get("packed_tokens", 0) / c["packed_capacity"]
    s.oom_splits = sum(r.oom_splits for r in task.runners)
    counters.add({"oom_skipped": sum(r.skipped for r in task.runners)})


def _finalize(task: Task, out: Path, index, source: np.ndarray, empty: np.ndarray, fingerprint: str) -> dict:
    results = Results(out / "shards", len(index), fingerprint=fingerprint)
    bad_rows = np.asarray(results.bad_rows, dtype=np.int64)
    is_bad = np.zeros(len(index), dtype=bool)
    is_bad[bad_rows] = True
    reasons = dict(zip(bad_rows.tolist(), results.bad_reasons))
    bad_out = is_bad[source] & ~empty  # a duplicate of a skipped record is skipped too
    plan = RunPlan(rows=np.flatnonzero(~empty & ~bad_out), source=source[~empty & ~bad_out], empty=np.flatnonzero(empty),
                   bad={int(i): reasons[int(source[i])] for i in np.flatnonzero(bad_out)}, fingerprint=fingerprint)
    counts = task.finalize(out, index, results, plan) or {}
    by_reason: dict[str, list[str]] = {}
    for i, why in plan.bad.items():
        by_reason.setdefault(why, []).append(index.ids[i])
    if by_reason:
        counts["bad"] = by_reason
        for why, ids in by_reason.items():
            log.warning("%d record(s) skipped (%s), e.g. %r; they are listed in run_report.json", len(ids), why, ids[0])
    return counts


def _warn(c: Counters, index: SequenceIndex, task: Task) -> None:
    """Rank 0, once per run: what was counted, with one example and where it is."""
    for key, what in (("unknown_letters", "hold letters the model does not know (embedded as its unknown token)"),
                      ("terminal_stops", "ended with '*' (a stop codon); it was removed before embedding"),
                      ("oom_skipped", "did not fit in GPU memory even alone and were skipped")):
        n = c.counts.get(key, 0)
        if n:
            ex = c.examples.get(key, [])
            where = ""
            if ex:
                try:
                    i = index.position(ex[0])
                    where = f", e.g. {ex[0]!r} at {index.where(i)}"
                    tok = task.models[0].tokenizer if getattr(task, "models", None) else None
                    if key == "unknown_letters" and hasattr(tok, "unknown_letters"):
                        where += f" has {', '.join(map(repr, tok.unknown_letters(index.read(i))))};"
                except (KeyError, ValueError):  # an id of the task's own (e.g. a predict frame)
                    where = f", e.g. {ex[0]!r}"
            log.warning("%d record(s) %s%s (counted in run_report.json: counters.%s)", n, what, where, key)


def _plain(cfg: Any) -> Any:
    return asdict(cfg) if is_dataclass(cfg) else dict(vars(cfg))


def run_main(parser: argparse.ArgumentParser, config_cls, make_task, argv: list[str] | None) -> int:
    """``main()`` of an entrypoint: flags -> frozen config (1:1) -> ``run(make_task(cfg), ctx)`` on this rank."""
    cfg = config_from_args(config_cls, parser.parse_args(argv))
    ctx = init_distributed(cfg.device)
    try:
        run(make_task(cfg), ctx)
    finally:
        ctx.shutdown()
    return 0
