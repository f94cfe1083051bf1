"""Job and lock queries through a real queue: Ganeti's shapes for ids, archived jobs, locks."""

from __future__ import annotations

import time
from typing import Any

import pytest

from jobqueue.errors import OpPrereqError
from tests import lu_harness
from tests.lu_harness import dummy, kill, run_job, start_blocker
from tests.queue_harness import QueueUnderTest

make_queue = lu_harness.make_queue  # fixtures shared with the LU tests
queue = lu_harness.queue
RS_NORMAL, RS_UNKNOWN, RS_UNAVAIL = 0, 1, 3


def values(answer: dict[str, Any]) -> list[list[Any]]:
    """The plain values of a Query answer's rows (None unless normal)."""
    return [
        [value if status == RS_NORMAL else None for status, value in row] for row in answer["data"]
    ]


class TestIds:
    def test_ganeti_s_id_filter(self, queue: QueueUnderTest) -> None:
        """``MakeSimpleFilter("id", ids)``: ``==``, the given order, unknown ids answered."""
        first = run_job(queue, [dummy()])["id"]
        second = run_job(queue, [dummy(fail=True)])["id"]
        qfilter = ["|", ["==", "id", second], ["==", "id", 999], ["==", "id", first]]
        answer = queue.query("job", ["id", "status", "summary"], qfilter)
        assert answer["data"] == [
            [[RS_NORMAL, second], [RS_NORMAL, "error"], [RS_NORMAL, ["TEST_DUMMY"]]],
            [[RS_NORMAL, 999], [RS_UNAVAIL, None], [RS_UNAVAIL, None]],
            [[RS_NORMAL, first], [RS_NORMAL, "success"], [RS_NORMAL, ["TEST_DUMMY"]]],
        ]

    def test_legacy_equal_ids_as_text_and_repeats(self, queue: QueueUnderTest) -> None:
        job_id = run_job(queue, [dummy()])["id"]
        qfilter = ["|", ["=", "id", str(job_id)], ["==", "id", job_id]]
        assert values(queue.query("job", ["id"], qfilter)) == [[job_id]]
        with pytest.raises(OpPrereqError, match="Invalid job id"):
            queue.query("job", ["id"], ["==", "id", "x1"])

    def test_unknown_id_with_a_status_filter(self, queue: QueueUnderTest) -> None:
        """Not only ids: the candidates are the existing jobs, as in Ganeti."""
        job_id = run_job(queue, [dummy()])["id"]
        qfilter = ["&", ["|", ["==", "id", job_id], ["==", "id", 999]], ["==", "status", "success"]]
        assert values(queue.query("job", ["id"], qfilter)) == [[job_id]]

    def test_unknown_id_in_old_style_queries(self, queue: QueueUnderTest) -> None:
        assert queue.query_jobs([999], ["id", "status", "archived"]) == [[999, None, None]]


class TestStatusFilters:
    def test_running_pending_and_contains(self, queue: QueueUnderTest) -> None:
        done = run_job(queue, [dummy()])["id"]
        blocker = start_blocker(queue)
        waiter = queue.submit_job([dummy(depends=[[blocker, []]])])
        lu_harness.wait_for_status(queue, waiter, "waiting")
        running = queue.query("job", ["id"], ["|", ["==", "status", "running"]])
        assert values(running) == [[blocker]]
        pending = ["|", ["==", "status", "queued"], ["==", "status", "waiting"]]
        assert values(queue.query("job", ["id"], pending)) == [[waiter]]
        contains = queue.query("job", ["id"], ["=[]", "opstatus", "success"])
        assert values(contains) == [[done]]
        summary = queue.query("job", ["id"], ["=~", "summary", "^TEST_DEL"])
        assert values(summary) == [[blocker]]
        kill(queue, blocker)

    def test_timestamps_compare_by_seconds(self, queue: QueueUnderTest) -> None:
        job_id = run_job(queue, [dummy()])["id"]
        now = int(time.time())
        assert values(queue.query("job", ["id"], ["<=", "received_ts", now + 1])) == [[job_id]]
        assert values(queue.query("job", ["id"], [">", "end_ts", now + 60])) == []

    def test_a_value_of_the_wrong_type_is_a_typed_error(self, queue: QueueUnderTest) -> None:
        run_job(queue, [dummy()])
        with pytest.raises(OpPrereqError, match="Invalid types in comparison"):
            queue.query("job", ["id"], ["==", "status", 1])
        with pytest.raises(OpPrereqError, match="fractional"):
            queue.query("job", ["id"], ["==", "id", 1.5])
        with pytest.raises(OpPrereqError, match="nested deeper"):
            queue.query("job", ["id"], _nested(500))


def _nested(depth: int) -> Any:
    qfilter: Any = ["==", "id", 1]
    for _ in range(depth):
        qfilter = ["&", qfilter]
    return qfilter


class TestArchived:
    def test_asking_for_archived_lists_live_and_archived(self, queue: QueueUnderTest) -> None:
        """``gnt-job list --archived`` adds the ``archived`` field and expects both."""
        old = run_job(queue, [dummy()])["id"]
        assert queue.archive_job(old)
        live = run_job(queue, [dummy()])["id"]
        assert values(queue.query("job", ["id"], None)) == [[live]]
        both = queue.query("job", ["id", "status", "archived"], None)
        assert values(both) == [[old, "success", True], [live, "success", False]]
        assert both["fields"][2] == {
            "name": "archived",
            "title": "Archived",
            "kind": "bool",
            "doc": "Whether the job is archived (asking for it lists archived jobs too)",
        }
        only_archived = queue.query("job", ["id"], ["?", "archived"])
        assert values(only_archived) == [[old]]
        only_live = queue.query("job", ["id"], ["!", ["?", "archived"]])
        assert values(only_live) == [[live]]
        by_id = queue.query("job", ["archived"], ["|", ["==", "id", old], ["==", "id", live]])
        assert values(by_id) == [[True], [False]]
        assert queue.query_jobs([old, live], ["archived"]) == [[True], [False]]
        extension = queue.query("job", ["id", "archived"], None, archived=True)
        assert values(extension) == [[old, True]]


class TestLocks:
    def test_owners_and_waiters_are_text(self, queue: QueueUnderTest) -> None:
        """``gnt-debug locks`` joins owners with ","; Ganeti answers them as strings."""
        holder = start_blocker(queue)
        waiter = queue.submit_job([dummy(depends=[[holder, []]])])
        lu_harness.wait_for_status(queue, waiter, "waiting")
        rows = values(queue.query("lock", ["name", "mode", "owner", "pending"], None))
        assert ["cluster", "shared", [str(holder)], []] in rows
        assert [f"job/{holder}", None, [], [["job", [str(waiter)]]]] in rows
        for _, _, owners, pending in rows:
            assert all(isinstance(owner, str) for owner in owners)
            assert all(isinstance(name, str) for _, names in pending for name in names)
        kill(queue, holder)


class TestWatcherPause:
    def test_set_query_and_clear(self, queue: QueueUnderTest) -> None:
        assert queue.query_config_values(["watcher_pause"]) == [None]
        until = time.time() + 3600
        assert queue.set_watcher_pause(until) == until
        (paused,) = queue.query_config_values(["watcher_pause"])
        assert paused == pytest.approx(until)
        assert queue.set_watcher_pause(None) is None
        assert queue.query_config_values(["watcher_pause"]) == [None]

    def test_a_past_time_is_refused(self, queue: QueueUnderTest) -> None:
        with pytest.raises(OpPrereqError, match="Unable to set pause end time in the past"):
            queue.set_watcher_pause(time.time() - 10)
        assert queue.query_config_values(["watcher_pause"]) == [None]

    def test_kept_in_the_store(self, make_queue: lu_harness.MakeQueue, tmp_path: Any) -> None:
        first = make_queue(queue_dir=tmp_path / "q")
        until = int(time.time()) + 600
        first.set_watcher_pause(until)
        second = make_queue(queue_dir=tmp_path / "q")
        assert second.query_config_values(["watcher_pause"]) == [until]
