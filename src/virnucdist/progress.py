"""Rank-0 progress: a tqdm bar on a terminal, periodic plain lines otherwise.

Shards are token-balanced, so rank 0's share is a fair proxy for the job: its
ETA is the job's ETA.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("virnucdist")


class Progress:
    def __init__(self, total_records: int, total_tokens: int, enabled: bool = True, world_size: int = 1,
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
            self.bar.set_postfix(seqs=f"{self.records}/{self.total_records}", refresh=False)
            return
        now = time.perf_counter()
        if now - self._last >= self.log_every_s:
            self._last = now
            log.info("%s", self.line())

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        rate = self.tokens / el if el > 0 else 0.0
        left = (self.total_tokens - self.tokens) / rate if rate > 0 else float("nan")
        pct = self.tokens / self.total_tokens if self.total_tokens else 1.0
        return (f"{self.desc}: {pct:6.1%}  {self.records}/{self.total_records} seqs on rank 0, "
                f"{rate * self.world_size:,.0f} {self.unit}/s (all ranks, est.), ETA {left:,.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.records:
            log.info("%s", self.line())
