"""The benchmark's etcd section (bench/ha.py): its rows without etcd, and its comparisons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import ha
from bench.common import Context, Row, Settings
from bench.jobqueue_sections import SUBMIT, alternated_key, remember


def test_without_an_etcd_server_the_section_is_one_skipped_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ha, "etcd_binary", lambda: (None, "no etcd server binary"))
    rows = list(ha.run(Context(settings=Settings.quick())))
    assert [(row.section, row.skipped) for row in rows] == [(ha.SECTION, "no etcd server binary")]


def test_a_refused_etcd_release_is_a_reason_to_skip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "etcd"
    fake.write_text("#!/bin/sh\necho 'etcd Version: 3.5.2'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JOBQUEUE_ETCD", str(fake))
    reason = ha.unavailable()
    assert reason is not None and "3.5.2" in reason


def test_etcd_rows_are_set_beside_the_file_store_row_of_the_same_name() -> None:
    ctx = Context(settings=Settings.quick())
    remember(ctx, Row(SUBMIT, "SubmitJob, 16 clients", 400.0, "jobs/s"))
    remember(ctx, Row(SUBMIT, "SubmitJob latency, 16 clients p99", 40.0, "ms"))
    rate = ha.beside_file_store(ctx, Row(ha.SECTION, "etcd, SubmitJob, 16 clients", 100.0))
    latency = ha.beside_file_store(
        ctx, Row(ha.SECTION, "etcd, SubmitJob latency, 16 clients p99", 120.0)
    )
    assert (rate.compared_with, rate.ratio) == ("file store (400)", 0.25)
    assert (latency.compared_with, latency.ratio) == ("file store (40)", 3.0)
    unmeasured = ha.beside_file_store(ctx, Row(ha.SECTION, "etcd, SubmitJob, 1 client", 90.0))
    assert unmeasured.compared_with == "file store: not measured"
    assert unmeasured.ratio is None


def test_etcd_is_set_beside_the_huey_figure_taken_nearest_in_time() -> None:
    ctx = Context(settings=Settings.quick())
    assert ha.latest_peer_figure(ctx, 2) == (None, "huey-sqlite (peers section)")
    ctx.values["peer.huey-sqlite.2"] = 1600.0
    assert ha.latest_peer_figure(ctx, 2) == (1600.0, "huey-sqlite (peers section)")
    ctx.values[alternated_key(2)] = 1100.0
    assert ha.latest_peer_figure(ctx, 2) == (1100.0, "huey-sqlite alternated in section 3")
    assert ha.latest_peer_figure(ctx, 25) == (None, "huey-sqlite (peers section)")


def test_a_failing_part_keeps_its_rows_and_ends_in_a_skipped_row() -> None:
    def part() -> Iterator[Row]:
        yield Row(ha.SECTION, "first", 1.0)
        raise RuntimeError("etcd went away")

    rows = list(ha.guarded("submission", part()))
    assert [row.metric for row in rows] == ["first", "submission"]
    assert rows[1].skipped == "failed (RuntimeError: etcd went away)"


def test_each_daemon_gets_a_prefix_of_its_own() -> None:
    first, second = ha.new_prefix(), ha.new_prefix()
    assert first != second
    assert first.startswith("/jobqueue/bench-")
