"""VirNucPro's classifier training recipe (its ``train.py``), on feature rows already embedded.

``Linear(d, 512) -> BatchNorm1d -> ReLU -> Dropout(0.5) -> Linear(512, 2)`` with xavier-uniform
weights and zero biases, cross-entropy, SGD (lr 2e-4, momentum 0.9), StepLR(10, 0.85), batches
of 32, 10% held out with seed 42, early stopping when the validation loss has not improved for
5 epochs (the weights of the best epoch are kept). Every number is a :class:`Recipe` field.

Rows are split by GROUP (all frames of one chunk or window, or of one input record) so that
frames of one piece of sequence never sit on both sides. Everything is seeded: the same rows,
labels and recipe give the same model bit for bit on the same device.

:func:`save_virnucpro_classifier` writes the model the way VirNucPro's ``train.py`` does
(``torch.save(model)`` of a class ``__main__.MLPClassifier`` with attributes ``hidden_layer``,
``bn1``, ``relu``, ``dropout``, ``output_layer``): VirNucPro's own ``prediction.py`` loads it,
and so does :func:`virnucdist.models.classifier.load_classifier`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..models.classifier import HIDDEN_DIM, NUM_CLASSES, MLPClassifier
from .._testhooks import test_hook

__all__ = ["Recipe", "EpochLog", "split_groups", "balance_mask", "train_classifier", "binary_metrics", "chunk_metrics",
           "save_virnucpro_classifier"]


@dataclass(frozen=True)
class Recipe:
    """VirNucPro's ``train.py`` defaults."""

    hidden_dim: int = HIDDEN_DIM
    dropout: float = 0.5
    lr: float = 2e-4
    momentum: float = 0.9
    step_size: int = 10
    gamma: float = 0.85
    batch_size: int = 32
    max_epochs: int = 200
    patience: int = 5
    val_fraction: float = 0.1
    split_seed: int = 42
    seed: int = 42  # weights and batch order

    def check(self) -> None:
        from ..errors import UserError

        bad = [f"--{k.replace('_', '-')} {v}" for k, v in (
            ("lr", self.lr), ("batch_size", self.batch_size), ("max_epochs", self.max_epochs),
            ("step_size", self.step_size), ("hidden_dim", self.hidden_dim)) if not v > 0]
        if not 0 < self.val_fraction < 1:
            bad.append(f"--val-fraction {self.val_fraction} (between 0 and 1)")
        if not 0 <= self.dropout < 1:
            bad.append(f"--dropout {self.dropout} (0 <= p < 1)")
        if not self.momentum >= 0:
            bad.append(f"--momentum {self.momentum} (>= 0)")
        if not self.gamma > 0:
            bad.append(f"--gamma {self.gamma} (> 0)")
        if self.patience < 1:
            bad.append(f"--patience {self.patience}")
        if bad:
            raise UserError(f"training settings out of range: {', '.join(bad)}")


@dataclass
class EpochLog:
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float

    HEADER = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy")

    def row(self) -> str:
        return "\t".join([str(self.epoch), f"{self.lr:.6g}"] + [f"{v:.6f}" for v in
                         (self.train_loss, self.train_accuracy, self.val_loss, self.val_accuracy)])


def split_groups(groups: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out rows: a seeded ``val_fraction`` of the distinct groups
    (at least one group on each side when there are two or more)."""
    uniq = np.unique(groups)
    n_val = int(round(len(uniq) * val_fraction))
    n_val = min(max(n_val, 1), len(uniq) - 1) if len(uniq) > 1 else 0
    rng = np.random.default_rng(seed)
    held = rng.permutation(uniq)[:n_val]
    return np.isin(groups, held)


def balance_mask(y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Rows to keep so that both classes have about as many frames: whole groups of the larger class are
    drawn (seeded) until its frames reach the smaller class's count; the smaller class is kept whole."""
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    keep = np.ones(len(y), dtype=bool)
    if n_pos == n_neg or min(n_pos, n_neg) == 0:
        return keep
    big = n_pos > n_neg
    rows = np.flatnonzero(y == big)
    uniq, inverse, counts = np.unique(groups[rows], return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    take = order[: int(np.searchsorted(np.cumsum(counts[order]), min(n_pos, n_neg))) + 1]
    chosen = np.zeros(len(uniq), dtype=bool)
    chosen[take] = True
    keep[rows] = chosen[inverse]
    return keep


def _build(d: int, r: Recipe) -> MLPClassifier:
    model = MLPClassifier(d, r.hidden_dim, NUM_CLASSES)
    model.dropout.p = r.dropout
    for m in (model.hidden_layer, model.output_layer):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)
    return model


def _evaluate(model, x, y, batch: int = 4096) -> tuple[float, float, torch.Tensor]:
    """Mean cross-entropy, accuracy and P(virus) of rows ``x`` (eval mode)."""
    model.eval()
    loss, correct, probs = 0.0, 0, []
    with torch.no_grad():
        for a in range(0, len(x), batch):
            dev = next(model.parameters()).device
            logits = model(x[a:a + batch].to(dev))
            t = y[a:a + batch].to(dev)
            loss += nn.functional.cross_entropy(logits, t, reduction="sum").item()
            correct += int((logits.argmax(1) == t).sum())
            probs.append(torch.softmax(logits, 1)[:, 1].float().cpu())
    n = max(len(x), 1)
    return loss / n, correct / n, torch.cat(probs) if probs else torch.zeros(0)


def train_classifier(x: torch.Tensor, y: torch.Tensor, held_out: np.ndarray, recipe: Recipe,
                     device: torch.device | str = "cpu", on_epoch: Callable[[EpochLog], None] | None = None,
                     time_limit_s: float | None = None) -> tuple[MLPClassifier, list[EpochLog], dict]:
    """Train on the rows not ``held_out``; returns the best-epoch model (eval mode, CPU), the
    per-epoch log and the held-out metrics (:func:`binary_metrics`, plus sizes, epochs and why it
    stopped). ``time_limit_s``: no new epoch starts after this many seconds."""
    device = torch.device(device)
    r = recipe
    held = torch.from_numpy(np.asarray(held_out, dtype=bool))
    xt, yt, xv, yv = x[~held], y[~held], x[held], y[held]
    try:  # all rows on the device when they fit (no copy per batch); else batches are copied over
        xt, yt, xv, yv = (t.to(device) for t in (xt, yt, xv, yv))
    except torch.OutOfMemoryError:
        xt, yt, xv, yv = (t.cpu() for t in (xt, yt, xv, yv))
        torch.cuda.empty_cache()
    torch.manual_seed(r.seed)
    model = _build(x.shape[1], r).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=r.step_size, gamma=r.gamma)
    gen = torch.Generator().manual_seed(r.seed)
    log: list[EpochLog] = []
    best, best_state, best_epoch, waited = math.inf, None, 0, 0
    stopped, t0 = "max_epochs", time.monotonic()
    for epoch in range(1, r.max_epochs + 1):
        if time_limit_s is not None and epoch > 1 and time.monotonic() - t0 > time_limit_s:
            stopped = "time_limit"
            break
        model.train()
        order = torch.randperm(len(xt), generator=gen).to(xt.device)
        total = torch.zeros((), device=device)  # summed on the device: no host sync per step
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for a in range(0, len(order), r.batch_size):
            idx = order[a:a + r.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on one row; the lone last row waits for the next epoch
                continue
            xb, yb = xt[idx].to(device, non_blocking=True), yt[idx].to(device, non_blocking=True)
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(idx)
        total, correct = total.item(), int(correct)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        vloss, vacc, _ = _evaluate(model, xv, yv)
        e = EpochLog(epoch, lr, total / max(seen, 1), correct / max(seen, 1), vloss, vacc)
        log.append(e)
        if on_epoch is not None:
            on_epoch(e)
        test_hook("epoch")
        if vloss < best:
            best, best_epoch, waited = vloss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= r.patience:
                stopped = "early_stopping"
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    _, _, p = _evaluate(model, xv, yv)
    metrics = binary_metrics(yv.cpu().numpy(), p.numpy())  # held-out rows stay in input order
    metrics.update({"train_rows": int(len(xt)), "held_out_rows": int(len(xv)), "epochs_run": len(log),
                    "best_epoch": best_epoch, "best_val_loss": best if best < math.inf else None,
                    "stopped_by": stopped})
    return model.cpu().eval(), log, metrics


def _auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None with one class only."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sp = p[order]
    i = 0
    while i < len(sp):  # average ranks over ties
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def binary_metrics(y: np.ndarray, p_virus: np.ndarray) -> dict:
    """accuracy, precision, recall, f1 (virus = positive), auroc and the confusion matrix
    (rows: true others/virus, columns: called others/virus) at VirNucPro's rule ``P(virus) >= 0.5``."""
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p_virus, dtype=np.float64)
    call = (p >= 0.5).astype(np.int64)
    tp = int(((call == 1) & (y == 1)).sum())
    tn = int(((call == 0) & (y == 0)).sum())
    fp = int(((call == 1) & (y == 0)).sum())
    fn = int(((call == 0) & (y == 1)).sum())
    n = max(len(y), 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
            "auroc": _auroc(y, p), "confusion_matrix": [[tn, fp], [fn, tp]],
            "confusion_matrix_labels": {"rows": ["true others", "true virus"],
                                        "columns": ["called others", "called virus"]}}


def chunk_metrics(y: np.ndarray, p_virus: np.ndarray, chunk: np.ndarray) -> dict:
    """:func:`binary_metrics` per chunk/window with VirNucPro's consensus (``prediction_results_highestscore``):
    virus when the chunk's highest P(virus) >= its highest P(others) over its frames. The AUROC ranks
    chunks by ``(max P(virus) - max P(others) + 1) / 2``, which is >= 0.5 exactly for a virus call."""
    if len(chunk) == 0:
        return binary_metrics(np.zeros(0), np.zeros(0))
    order = np.argsort(chunk, kind="stable")
    c, yy, pv = chunk[order], np.asarray(y)[order], np.asarray(p_virus, dtype=np.float64)[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    top_v = np.maximum.reduceat(pv, starts)
    top_o = np.maximum.reduceat(1.0 - pv, starts)
    out = binary_metrics(yy[starts], (top_v - top_o + 1.0) / 2.0)
    out["chunks"] = int(len(starts))
    return out


class _Original(MLPClassifier):
    """Pickled under the name VirNucPro's scripts define: ``__main__.MLPClassifier``."""


_Original.__module__, _Original.__name__, _Original.__qualname__ = "__main__", "MLPClassifier", "MLPClassifier"


def save_virnucpro_classifier(model: MLPClassifier, path: str | Path) -> Path:
    """``torch.save`` of the whole module as VirNucPro's ``train.py`` leaves it (class
    ``__main__.MLPClassifier``), written to a temporary name and renamed into place."""
    path = Path(path)
    clone = _Original(model.hidden_layer.in_features, model.hidden_layer.out_features, NUM_CLASSES)
    clone.load_state_dict(model.state_dict())
    clone.dropout.p = model.dropout.p
    main = sys.modules["__main__"]
    had = main.__dict__.get("MLPClassifier", _Missing)
    main.MLPClassifier = _Original  # pickle checks that the name leads back to the class
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(clone.eval(), tmp)
    finally:
        if had is _Missing:
            del main.MLPClassifier
        else:
            main.MLPClassifier = had
    tmp.replace(path)
    return path


class _Missing:
    pass


def recipe_dict(r: Recipe) -> dict:
    return asdict(r)
