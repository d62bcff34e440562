"""Rank-0 progress: a tqdm bar on a terminal, periodic plain lines otherwise.

Shards are token-balanced, so rank 0's share is a fair proxy for the job: its
ETA is the job's ETA. Progress moves at least every ``heartbeat_s`` (30 s) even when one
batch takes minutes (a 100,000-residue protein): a timer thread prints the last state and
how long the current batch has been running when no batch finished in that time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref

log = logging.getLogger("virnucdist")


class Progress:
    """Counts records and tokens (or bytes, bases: ``unit``) against their totals.

    ``total_records`` 0 means records are not counted (index build, finalize);
    ``total_tokens`` None means the total is unknown (no percentage or ETA).
    """

    def __init__(self, total_records: int, total_tokens: int | None, enabled: bool = True, world_size: int = 1,
                 desc: str = "embedding", log_every_s: float = 30.0, unit: str = "tok", heartbeat_s: float = 30.0):
        self.total_records, self.total_tokens = total_records, total_tokens
        self.enabled, self.world_size, self.desc = enabled, world_size, desc
        self.records = self.tokens = 0
        self.t0 = self._last = self._last_update = time.perf_counter()
        self.log_every_s = log_every_s
        self.unit = unit  # what ``tokens`` counts (e.g. "bp" for reads)
        self.heartbeat_s = heartbeat_s
        self.bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_tokens, unit=unit, unit_scale=True, desc=f"{desc} (rank 0 of {world_size})",
                            dynamic_ncols=True, smoothing=0.05)
        if enabled and heartbeat_s > 0:
            # the thread holds the Progress weakly: one that is dropped without close() stops it too
            self._beat = threading.Thread(target=_heartbeat, args=(weakref.ref(self), self._stop, heartbeat_s),
                                          name="virnucdist-progress", daemon=True)
            self._beat.start()

    def update(self, records: int, tokens: int) -> None:
        now = time.perf_counter()
        with self._lock:
            self.records += records
            self.tokens += tokens
            self._last_update = now
            if not self.enabled:
                return
            if self.bar is not None:
                self.bar.update(tokens)
                if self.total_records:
                    self.bar.set_postfix(seqs=f"{self.records}/{self.total_records}", refresh=False)
                return
            if now - self._last >= self.log_every_s:
                self._last = now
                log.info("%s", self.line())

    def _beat_once(self) -> None:
        """When nothing was printed for ``heartbeat_s``: print the state, and the stall if no batch finished."""
        now = time.perf_counter()
        with self._lock:
            if now - self._last < self.heartbeat_s or self._stop.is_set():
                return
            self._last = now
            stalled = now - self._last_update
            what = "the first batch" if not self.tokens else "a batch"
            note = f"still working on {what}, {stalled:,.0f} s" if stalled >= self.heartbeat_s else ""
            if self.bar is not None:  # a terminal: the bar's clock moves, the note says why
                if note:
                    self.bar.set_postfix_str(note, refresh=True)
                else:
                    self.bar.refresh()
            else:
                log.info("%s", self.line() + (f"; {note}" if note else ""))

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

    def close(self, summary: bool = True) -> None:
        """Stop the bar; ``summary=False`` (the work failed) ends without a last progress line."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.bar is not None:
            self.bar.close()
        elif summary and self.enabled and self.tokens:
            log.info("%s", self.line())


def _heartbeat(ref: weakref.ref, stop: threading.Event, every_s: float) -> None:
    """The timer thread of one :class:`Progress`: looks every few seconds, ends with it."""
    while not stop.wait(min(every_s, 5.0)):
        p = ref()
        if p is None:
            return
        p._beat_once()
        del p


def index_progress(inputs, enabled: bool) -> Progress:
    """A bar over the input bytes for the index build (unknown total when an input is gzip)."""
    from .data.fasta import is_gzip

    total = None if any(is_gzip(p) for p in inputs) else sum(os.path.getsize(p) for p in inputs)
    return Progress(0, total, enabled=enabled, desc="indexing", unit="B")
