"""Token-budget packing: batches of whole sequences, no padding.

Batches are planned in the main process by :class:`TokenBudgetSampler` (a
deterministic batch sampler over index positions); DataLoader workers only read
and tokenize the records they are handed and :func:`collate_packed` concatenates
them. No state lives in the workers, so nothing can be dropped there, and every
planned record comes out exactly once (the loader checks the count).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .models.tokenization import SequenceTokenizer

__all__ = ["PackedBatch", "Encoded", "encode_records", "TokenBudgetSampler", "PackedBatchLoader", "collate_packed", "pack_token_arrays",
           "plan_batches", "pack_longest_first", "split_batch", "pad_to_tile", "PairedBatch", "pack_pairs"]


@dataclass
class PackedBatch:
    """Sequences concatenated into one flat token stream.

    tokens/positions/seg: ``[T]`` (seg = slot of the token's sequence in this batch);
    cu_seqlens: int32 ``[B+1]``; rows: int64 ``[B]``, each sequence's position in the list it was
    packed from: in the engine, a slot of the window's records (``Block.rows[batch.rows]`` are the
    index rows); from :class:`PackedBatchLoader`, index rows themselves. n_truncated: records cut to
    the tokenizer's length cap; unknown_rows: the ``rows`` entries of records with letters the
    tokenizer maps to its unknown token (counted, not dropped).

    Words: a *window* is a run of records planned together (the unit of commit and resume), made into
    a :class:`~virnucdist.engine.task.Block` in a DataLoader worker; a *batch* is one forward's worth
    of packed tokens, several per block.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    seg: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    rows: torch.Tensor
    n_truncated: int = 0
    unknown_rows: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())

    @property
    def num_seqs(self) -> int:
        return int(self.rows.numel())

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "PackedBatch":
        vals = {f.name: getattr(self, f.name) for f in fields(self)}
        return PackedBatch(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in vals.items()})

    def pin_memory(self) -> "PackedBatch":
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "PackedBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


def pack_token_arrays(arrays: Sequence[np.ndarray], rows: Sequence[int], n_truncated: int = 0,
                      unknown_rows: tuple[int, ...] = ()) -> PackedBatch:
    """Concatenate per-sequence token arrays into a :class:`PackedBatch`."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    cu = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:])
    total = int(cu[-1])
    seg = np.repeat(np.arange(len(arrays), dtype=np.int64), lengths)
    positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64), lengths)
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return PackedBatch(
        tokens=torch.from_numpy(tokens.astype(np.int64, copy=False)),
        positions=torch.from_numpy(positions),
        seg=torch.from_numpy(seg),
        cu_seqlens=torch.from_numpy(cu),
        max_seqlen=int(lengths.max()) if len(arrays) else 0,
        rows=torch.as_tensor(np.asarray(rows, dtype=np.int64)),
        n_truncated=n_truncated,
        unknown_rows=tuple(unknown_rows),
    )


def plan_batches(tokens: np.ndarray, budget: int, max_seqs: int | None = None) -> list[tuple[int, int]]:
    """Greedy cuts of a sequence of token counts into ``[a, b)`` runs of at most ``budget`` tokens
    (and ``max_seqs`` records); a record longer than the budget gets a run of its own."""
    cuts, start, fill = [], 0, 0
    for i, t in enumerate(np.asarray(tokens).tolist()):
        if i > start and (fill + t > budget or (max_seqs and i - start >= max_seqs)):
            cuts.append((start, i))
            start, fill = i, 0
        fill += t
    if start < len(tokens):
        cuts.append((start, len(tokens)))
    return cuts


def pack_longest_first(arrays: Sequence[np.ndarray], budget: int) -> list[PackedBatch]:
    """Pack token arrays into batches of at most ``budget`` tokens, longest first (similar lengths
    share a batch), ties in input order. ``rows`` of each batch are the arrays' positions in ``arrays``."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    order = np.argsort(-lengths, kind="stable")
    return [pack_token_arrays([arrays[i] for i in order[a:b]], order[a:b])
            for a, b in plan_batches(lengths[order], budget)]


@dataclass
class PairedBatch:
    """Two packed views of the same records in the same order (predict: each frame's protein for ESM-2
    and its nucleotides for DNABERT-S); ``rows`` of both are the records' positions."""

    protein: PackedBatch
    nucleotide: PackedBatch

    def pin_memory(self) -> "PairedBatch":
        return PairedBatch(self.protein.pin_memory(), self.nucleotide.pin_memory())


def pack_pairs(first: Sequence[np.ndarray], second: Sequence[np.ndarray], first_budget: int,
               second_budget: int) -> list[PairedBatch]:
    """Greedy paired packing in record order: a batch closes when either side's budget would overflow
    (a record over budget gets a batch of its own). Batches cover the records in order."""
    batches, start, f1, f2 = [], 0, 0, 0

    def close(a: int, b: int) -> None:
        rows = np.arange(a, b, dtype=np.int64)
        batches.append(PairedBatch(pack_token_arrays(first[a:b], rows), pack_token_arrays(second[a:b], rows)))

    for i, (p, n) in enumerate(zip(first, second)):
        if i > start and (f1 + len(p) > first_budget or f2 + len(n) > second_budget):
            close(start, i)
            start, f1, f2 = i, 0, 0
        f1 += len(p)
        f2 += len(n)
    if start < len(first):
        close(start, len(first))
    return batches


class TokenBudgetSampler(Sampler[list[int]]):
    """Plans batches of index positions whose token counts sum to <= ``budget``.

    Records are taken longest first (similar lengths share a batch, so attention
    work per batch is even), ties by position; a record longer than the budget
    gets a batch of its own. Deterministic.
    """

    def __init__(self, rows: np.ndarray, tokens: np.ndarray, budget: int, max_seqs: int | None = None):
        if budget <= 0:
            raise ValueError("token budget must be positive")
        rows = np.asarray(rows, dtype=np.int64)
        tokens = np.asarray(tokens, dtype=np.int64)
        order = np.lexsort((rows, -tokens))
        self.rows, self.tokens, self.budget = rows[order], tokens[order], int(budget)
        self.batches = self._plan(max_seqs)

    def _plan(self, max_seqs: int | None) -> list[np.ndarray]:
        return [self.rows[a:b] for a, b in plan_batches(self.tokens, self.budget, max_seqs)]

    @property
    def planned_tokens(self) -> int:
        return int(self.tokens.sum())

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches:
            yield b.tolist()

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class Encoded:
    """Records through a tokenizer, with what the run counts about them (positions in the input list)."""

    ids: list[np.ndarray]
    truncated: list[int]  # cut to the tokenizer's length cap
    unknown: list[int]  # hold the tokenizer's unknown token
    terminal_stops: list[int]  # ended with a stop the tokenizer strips (ESM-2's '*')


def encode_records(seqs: Sequence[str], tokenizer: SequenceTokenizer) -> Encoded:
    """Tokenize records (in one call where the tokenizer encodes batches, e.g. DNABERT-S's BPE) and
    note the truncated ones, those with unknown letters and terminal stops. The one tokenizing path:
    the engine's block makers and :class:`PackedBatchLoader` both come here."""
    batch_encode = getattr(tokenizer, "encode_batch", None)
    ids = batch_encode(seqs) if batch_encode is not None else [tokenizer.encode(s) for s in seqs]
    is_truncated = getattr(tokenizer, "is_truncated", None)
    unk = getattr(tokenizer, "unk_id", None)
    has_stop = getattr(tokenizer, "has_terminal_stop", None)
    return Encoded(list(ids),
                   [j for j, s in enumerate(seqs) if is_truncated and is_truncated(len(s))],
                   [j for j, t in enumerate(ids) if unk is not None and (t == unk).any()],
                   [j for j, s in enumerate(seqs) if has_stop is not None and has_stop(s)])


class _TokenizedRecords(Dataset):
    def __init__(self, read: Callable[[int], str], tokenizer: SequenceTokenizer):
        self.read, self.tokenizer = read, tokenizer

    def __getitem__(self, row: int):
        return self.__getitems__([row])[0]

    def __getitems__(self, rows: list[int]):
        """One planned batch at once (DataLoader calls this with a batch sampler): batched tokenizers
        (DNABERT-S's BPE) encode the whole batch in one call."""
        enc = encode_records([self.read(r) for r in rows], self.tokenizer)
        cut, unknown = set(enc.truncated), set(enc.unknown)
        return [(r, t, j in cut, j in unknown) for j, (r, t) in enumerate(zip(rows, enc.ids))]


def collate_packed(items) -> PackedBatch:
    rows = [r for r, _, _, _ in items]
    return pack_token_arrays([ids for _, ids, _, _ in items], rows, sum(t for _, _, t, _ in items),
                             tuple(r for r, _, _, u in items if u))


class PackedBatchLoader:
    """A DataLoader of :class:`PackedBatch` over selected records of an index.

    ``read(row) -> str`` fetches one sequence (e.g. ``SequenceIndex.read``) and
    must be picklable for worker processes. ``lengths`` are sequence lengths,
    converted to token counts by ``tokenizer.estimate_tokens``.
    """

    def __init__(
        self,
        read: Callable[[int], str],
        rows: np.ndarray,
        lengths: np.ndarray,
        tokenizer: SequenceTokenizer,
        toks_per_batch: int,
        *,
        num_workers: int = 2,
        pin_memory: bool = False,
        prefetch_factor: int = 4,
        max_seqs: int | None = None,
    ):
        rows = np.asarray(rows, dtype=np.int64)
        est = np.fromiter((tokenizer.estimate_tokens(int(n)) for n in lengths), dtype=np.int64, count=len(rows))
        self.sampler = TokenBudgetSampler(rows, est, toks_per_batch, max_seqs)
        self.toks_per_batch = int(toks_per_batch)
        self.num_records = len(rows)
        self.loader = DataLoader(
            _TokenizedRecords(read, tokenizer),
            batch_sampler=self.sampler,
            collate_fn=collate_packed,
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            persistent_workers=False,
        )
        self.tokens_seen = 0
        self.batches_seen = 0
        self.records_seen = 0
        self.capacity_seen = 0  # budget per batch, or the tokens of a lone record longer than the budget

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[PackedBatch]:
        self.tokens_seen = self.batches_seen = self.records_seen = self.capacity_seen = 0
        for batch in self.loader:
            self.tokens_seen += batch.num_tokens
            self.capacity_seen += max(self.toks_per_batch, batch.num_tokens)
            self.batches_seen += 1
            self.records_seen += batch.num_seqs
            yield batch
        if self.records_seen != self.num_records:
            raise RuntimeError(f"packing lost records: planned {self.num_records}, produced {self.records_seen}")

    @property
    def packing_efficiency(self) -> float:
        """Real tokens over the token capacity of the batches produced: the budget per batch, or a lone
        over-budget record's own tokens (so a 20 kb read in a small budget does not read as >100%)."""
        if self.batches_seen == 0:
            return 0.0
        return self.tokens_seen / self.capacity_seen


def pad_to_tile(batch: PackedBatch, tile: int, pad_id: int = 0, piece: int = 64) -> PackedBatch:
    """``batch`` with dummy segments of ``pad_id`` tokens (at most ``piece`` each, after the real ones) up to
    exactly ``tile`` tokens, or the next multiple of ``tile`` for a batch longer than it: every forward of a
    reproducible run has one row count, whatever records share the batch. ``rows`` stays the real records'."""
    t = batch.num_tokens
    total = max(tile, -(-t // tile) * tile)
    extra = total - t
    if extra == 0:
        return batch
    lengths = [piece] * (extra // piece) + ([extra % piece] if extra % piece else [])
    b = batch.num_seqs
    dev = batch.tokens.device
    pos = torch.cat([torch.arange(n, dtype=batch.positions.dtype) for n in lengths]).to(dev)
    seg = torch.repeat_interleave(torch.arange(b, b + len(lengths)), torch.tensor(lengths)).to(dev, batch.seg.dtype)
    ends = t + torch.cumsum(torch.tensor(lengths), 0).to(dev, batch.cu_seqlens.dtype)
    return PackedBatch(torch.cat([batch.tokens, torch.full((extra,), pad_id, dtype=batch.tokens.dtype, device=dev)]),
                       torch.cat([batch.positions, pos]), torch.cat([batch.seg, seg]),
                       torch.cat([batch.cu_seqlens, ends]), max(batch.max_seqlen, max(lengths)), batch.rows,
                       batch.n_truncated, batch.unknown_rows)


def split_batch(batch: PackedBatch) -> tuple[PackedBatch, PackedBatch]:
    """Two halves (by sequences) of a host-side batch; used to retry after out-of-memory."""
    n = batch.num_seqs
    if n < 2:
        raise ValueError("cannot split a batch of one sequence")
    k = n // 2
    cu = batch.cu_seqlens.to(torch.int64)
    cut = int(cu[k])
    first = PackedBatch(batch.tokens[:cut], batch.positions[:cut], batch.seg[:cut], batch.cu_seqlens[:k + 1].clone(),
                        int((cu[1:k + 1] - cu[:k]).max()), batch.rows[:k], 0)
    second = PackedBatch(batch.tokens[cut:], batch.positions[cut:], batch.seg[cut:] - k,
                         (batch.cu_seqlens[k:] - cut).to(torch.int32), int((cu[k + 1:] - cu[k:-1]).max()),
                         batch.rows[k:], 0)
    return first, second
