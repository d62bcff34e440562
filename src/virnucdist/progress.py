"""Rank-0 progress: a tqdm bar on a terminal, periodic plain lines otherwise.

Shards are token-balanced, so rank 0's share is a fair proxy for the job: its
ETA is the job's ETA.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("virnucdist")


class Progress:
    """Counts records and tokens (or bytes, bases: ``unit``) against their totals.

    ``total_records`` 0 means records are not counted (index build, finalize);
    ``total_tokens`` None means the total is unknown (no percentage or ETA).
    """

    def __init__(self, total_records: int, total_tokens: int | None, enabled: bool = True, world_size: int = 1,
                 desc: str = "embedding", log_every_s: float = 30.0, unit: str = "tok"):
        self.total_records, self.total_tokens = total_records, total_tokens
        self.enabled, self.world_size, self.desc = enabled, world_size, desc
        self.records = self.tokens = 0
        self.t0 = self._last = time.perf_counter()
        self.log_every_s = log_every_s
        self.unit = unit  # what ``tokens`` counts (e.g. "bp" for reads)
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_tokens, unit=unit, unit_scale=True, desc=f"{desc} (rank 0 of {world_size})",
                            dynamic_ncols=True, smoothing=0.05)

    def update(self, records: int, tokens: int) -> None:
        self.records += records
        self.tokens += tokens
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(tokens)
            if self.total_records:
                self.bar.set_postfix(seqs=f"{self.records}/{self.total_records}", refresh=False)
            return
        now = time.perf_counter()
        if now - self._last >= self.log_every_s:
            self._last = now
            log.info("%s", self.line())

    def advance(self, tokens: int) -> None:
        """A callback for loops that only count one quantity (bytes indexed, records merged)."""
        self.update(0, tokens)

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        rate = self.tokens / el if el > 0 else 0.0
        parts = [f"{self.desc}:"]
        if self.total_tokens:
            parts.append(f"{self.tokens / self.total_tokens:6.1%}")
        if self.total_records:
            parts.append(f" {self.records}/{self.total_records} seqs on rank 0,")
        scope = " (all ranks, est.)" if self.world_size > 1 else ""
        parts.append(f"{rate * self.world_size:,.0f} {self.unit}/s{scope}")
        if self.total_tokens and rate > 0 and self.tokens < self.total_tokens:
            parts.append(f", ETA {(self.total_tokens - self.tokens) / rate:,.0f} s")
        return " ".join(parts).replace(" ,", ",")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.tokens:
            log.info("%s", self.line())


def index_progress(inputs, enabled: bool) -> Progress:
    """A bar over the input bytes for the index build (unknown total when an input is gzip)."""
    from .fasta import is_gzip

    total = None if any(is_gzip(p) for p in inputs) else sum(os.path.getsize(p) for p in inputs)
    return Progress(0, total, enabled=enabled, desc="indexing", unit="B")
