"""Rank-0 progress: plain log lines when stderr is not a terminal, silence when disabled."""

from __future__ import annotations

import logging

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


def test_heartbeat_moves_while_one_batch_takes_long(caplog):
    """No batch finished for longer than the heartbeat: a line still comes, naming the stall."""
    import time

    caplog.set_level(logging.INFO, logger="virnucdist")
    p = Progress(total_records=10, total_tokens=1000, log_every_s=1e9, heartbeat_s=0.2)
    time.sleep(0.5)  # the first batch is slow (model warm-up, a huge record)
    assert any("still working on the first batch" in ln for ln in _lines(caplog)), _lines(caplog)
    p.update(2, 200)  # log_every_s is huge: update() itself prints nothing
    n = len(caplog.records)
    p.working_on(500)
    time.sleep(0.6)
    beats = _lines(caplog)[n:]
    assert beats and all("20.0%" in ln and "2/10 seqs on rank 0" in ln for ln in beats), beats
    assert any("still working on a batch of 500 tok" in ln for ln in beats), beats
    p.close()
    assert not p._beat.is_alive()
    n = len(caplog.records)
    time.sleep(0.5)
    assert len(caplog.records) == n  # closed: no heartbeat after close()


def test_heartbeat_silent_while_lines_flow_and_gone_with_the_object(caplog):
    import gc
    import time

    caplog.set_level(logging.INFO, logger="virnucdist")
    p = Progress(total_records=100, total_tokens=10_000, log_every_s=0.05, heartbeat_s=0.3)
    for _ in range(10):  # batches finish often and print: the heartbeat adds nothing
        p.update(1, 100)
        time.sleep(0.06)
    assert _lines(caplog) and not any("still working" in ln for ln in _lines(caplog))
    beat = p._beat
    del p  # dropped without close(): its thread ends too
    gc.collect()
    beat.join(timeout=2)
    assert not beat.is_alive()


def test_disabled_progress_has_no_heartbeat():
    assert Progress(total_records=1, total_tokens=1, enabled=False, heartbeat_s=0.1)._beat is None
