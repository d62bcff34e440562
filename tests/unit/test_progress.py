"""Rank-0 progress: plain log lines when stderr is not a terminal, silence when disabled."""

from __future__ import annotations

import gc
import logging
import time

from virnucdist.progress import Progress, index_progress


def test_plain_lines_with_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="virnucdist")
    p = Progress(total_records=10, total_tokens=1000, world_size=2, log_every_s=0.0)
    p.update(4, 400)
    assert p.bar is None  # pytest's stderr is not a terminal
    line = caplog.records[-1].getMessage()
    assert "40.0%" in line and "4/10 seqs on rank 0" in line and "tok/s (all ranks, est.)" in line and "ETA" in line
    p.update(6, 600)
    p.close()
    assert "100.0%" in caplog.records[-1].getMessage() and "ETA" not in caplog.records[-1].getMessage()


def test_disabled_is_silent(caplog):
    caplog.set_level(logging.INFO, logger="virnucdist")
    p = Progress(total_records=3, total_tokens=30, enabled=False, log_every_s=0.0)
    p.update(3, 30)
    p.close()
    assert not caplog.records and p.records == 3 and p.tokens == 30


def test_index_progress_counts_bytes(tmp_path, caplog):
    import gzip

    from virnucdist.data.index import SequenceIndex

    caplog.set_level(logging.INFO, logger="virnucdist")
    fa = tmp_path / "a.fa"
    fa.write_text(">a\nACGT\n>b\nAC\n")
    bar = index_progress([fa], enabled=True)
    bar.log_every_s = 0.0
    SequenceIndex.build([fa], progress=bar.advance)
    assert bar.total_tokens == fa.stat().st_size and bar.tokens == fa.stat().st_size
    gz = tmp_path / "b.fa.gz"
    gz.write_bytes(gzip.compress(b">c\nAAAA\n"))
    assert index_progress([fa, gz], enabled=False).total_tokens is None  # decompressed size unknown up front


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def _quiet_for(p: Progress, seconds: float) -> None:
    """As if nothing was printed and no batch finished for ``seconds`` (no sleeping, no timing)."""
    p._last = p._last_update = time.perf_counter() - seconds


def test_heartbeat_names_the_stall_while_one_batch_takes_long(caplog):
    """No batch finished for longer than the heartbeat: a line still comes, naming the stall."""
    caplog.set_level(logging.INFO, logger="virnucdist")
    p = Progress(total_records=10, total_tokens=1000, log_every_s=1e9, heartbeat_s=0)  # no thread: beats by hand
    p.heartbeat_s = 5.0
    _quiet_for(p, 6)  # the first batch is slow (model warm-up, a huge record)
    p._beat_once()
    assert any("still working on the first batch" in ln for ln in _lines(caplog)), _lines(caplog)
    p.update(2, 200)  # log_every_s is huge: update() itself prints nothing
    n = len(caplog.records)
    p._beat_once()  # a batch just finished: no heartbeat due
    assert len(caplog.records) == n
    _quiet_for(p, 6)
    p._beat_once()
    beats = _lines(caplog)[n:]
    assert beats and all("20.0%" in ln and "2/10 seqs on rank 0" in ln for ln in beats), beats
    assert any("still working on a batch" in ln for ln in beats), beats
    p.close()
    n = len(caplog.records)
    _quiet_for(p, 60)
    p._beat_once()
    assert len(caplog.records) == n  # closed: no heartbeat after close()


def test_heartbeat_silent_while_lines_flow(caplog):
    caplog.set_level(logging.INFO, logger="virnucdist")
    p = Progress(total_records=100, total_tokens=10_000, log_every_s=0.0, heartbeat_s=0)
    p.heartbeat_s = 5.0
    for _ in range(10):  # batches finish often and print: the heartbeat adds nothing
        p.update(1, 100)
        p._beat_once()
    assert len(_lines(caplog)) == 10 and not any("still working" in ln for ln in _lines(caplog))


def test_heartbeat_thread_ends_with_close_or_with_the_object():
    p = Progress(total_records=1, total_tokens=1, heartbeat_s=0.05)
    beat = p._beat
    assert beat.is_alive()
    p.close()
    assert not beat.is_alive()  # close() joins it
    p = Progress(total_records=1, total_tokens=1, heartbeat_s=0.05)
    beat = p._beat
    del p  # dropped without close(): its thread ends too
    gc.collect()
    beat.join(timeout=10)
    assert not beat.is_alive()


def test_disabled_progress_has_no_heartbeat():
    assert Progress(total_records=1, total_tokens=1, enabled=False, heartbeat_s=0.1)._beat is None
