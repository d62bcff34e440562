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

    from virnucdist.sharding.index import SequenceIndex

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
