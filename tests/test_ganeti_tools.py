"""What Ganeti's own tools send, byte for byte, against the real daemon.

Each request is framed as Ganeti's Python 3 client frames it (JSON with a
``version``, a newline, then ``0x03``) and shaped as ``gnt-job``,
``gnt-debug`` and ``gnt-cluster`` build them (see doc/luxi.rst, "Ganeti's
tools"). Read-only calls go to the query socket, as Ganeti 2.11 and later
send them; calls that change the queue to the master socket.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import simplejson

from tests.daemon_helper import Daemon, read_response, wait_until

GANETI_VERSION = 3020000
RS_NORMAL, RS_UNKNOWN, RS_UNAVAIL = 0, 1, 3
#: What ``gnt-job info`` asks for.
INFO_FIELDS = [
    "id", "status", "ops", "opresult", "opstatus", "oplog",
    "opstart", "opexec", "opend", "received_ts", "start_ts", "end_ts",
]  # fmt: skip
#: Seconds within which a plain request must be answered, however busy a handler is.
BOUND = 5.0


def ganeti_request(method: str, *args: Any) -> bytes:
    """One request as Ganeti's client puts it on the wire."""
    body = {"method": method, "args": list(args), "version": GANETI_VERSION}
    return simplejson.dumps(body).encode() + b"\n\x03"


class Conn:
    """One connection, many sequential requests, as Ganeti's client uses it."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)

    def call(self, method: str, *args: Any) -> Any:
        """The result of a successful call (the test fails on an error answer)."""
        answer = self.ask(method, *args)
        assert answer["success"] is True, answer
        return answer["result"]

    def ask(self, method: str, *args: Any) -> Any:
        self.sock.sendall(ganeti_request(method, *args))
        answer = read_response(self.sock)
        assert set(answer) == {"success", "result"}, answer
        return answer

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def master(daemon: Daemon) -> Any:
    conn = Conn(daemon.paths.master_socket)
    yield conn
    conn.close()


@pytest.fixture
def query(daemon: Daemon) -> Any:
    conn = Conn(daemon.paths.query_socket)
    yield conn
    conn.close()


def delay(duration: float) -> dict[str, Any]:
    return {"OP_ID": "OP_TEST_DELAY", "duration": duration}


def dummy(**params: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_TEST_DUMMY", **params}


def simple_filter(field: str, values: list[Any]) -> list[Any]:
    """``qlang.MakeSimpleFilter``: an ``|`` of ``==``."""
    return ["|", *(["==", field, value] for value in values)]


def running(daemon: Daemon, conn: Conn, duration: float = 600) -> int:
    """A job that runs until killed; returns once it runs."""
    job_id = conn.call("SubmitJob", [delay(duration)])
    wait_until(
        lambda: daemon.client().query_jobs([job_id], ["status"])[0][0] == "running",
        what=f"job {job_id} to run",
    )
    return int(job_id)


def kill(daemon: Daemon, conn: Conn, job_id: int) -> None:
    assert conn.call("CancelJob", job_id, True)[0] is True
    assert daemon.wait_job(job_id) == "canceled"


def plain(rows: list[list[list[Any]]]) -> list[list[Any]]:
    return [[value if status == RS_NORMAL else None for status, value in row] for row in rows]


class TestGntJob:
    def test_list_with_ids_and_status_options(
        self, daemon: Daemon, master: Conn, query: Conn
    ) -> None:
        """``gnt-job list 1 2 3``, ``--running``, ``--pending``, and ids with a status."""
        done = master.call("SubmitJob", [dummy()])
        daemon.wait_job(done)
        blocker = running(daemon, master)
        waiter = master.call("SubmitJob", [{**dummy(), "depends": [[blocker, []]]}])
        wait_until(lambda: daemon.client().query_jobs([waiter], ["status"])[0][0] == "waiting")
        fields = ["id", "status", "summary"]

        by_id = query.call("Query", "job", fields, simple_filter("id", [waiter, done, 4242]))
        assert [f["name"] for f in by_id["fields"]] == fields
        assert by_id["data"] == [
            [[RS_NORMAL, waiter], [RS_NORMAL, "waiting"], [RS_NORMAL, ["TEST_DUMMY"]]],
            [[RS_NORMAL, done], [RS_NORMAL, "success"], [RS_NORMAL, ["TEST_DUMMY"]]],
            [[RS_NORMAL, 4242], [RS_UNAVAIL, None], [RS_UNAVAIL, None]],
        ]
        running_only = query.call("Query", "job", fields, simple_filter("status", ["running"]))
        assert plain(running_only["data"]) == [[blocker, "running", ["TEST_DELAY(600)"]]]
        pending = simple_filter("status", ["queued", "waiting"])
        assert plain(query.call("Query", "job", ["id"], pending)["data"]) == [[waiter]]
        ids_and_status = ["&", simple_filter("id", [done, blocker]), pending]
        assert query.call("Query", "job", ["id"], ids_and_status)["data"] == []
        contains = ["|", ["=[]", "opstatus", "queued"], ["=[]", "opstatus", "waiting"]]
        assert plain(query.call("Query", "job", ["id"], contains)["data"]) == [[waiter]]
        legacy = ["|", ["=", "id", done]]
        assert plain(query.call("Query", "job", ["id"], legacy)["data"]) == [[done]]
        kill(daemon, master, blocker)

    def test_info_on_an_unknown_id(self, query: Conn) -> None:
        """``gnt-job info 4242`` prints "Job ID 4242 not found" from this row."""
        answer = query.call("Query", "job", INFO_FIELDS, simple_filter("id", [4242]))
        assert answer["data"] == [[[RS_NORMAL, 4242]] + [[RS_UNAVAIL, None]] * 11]
        assert query.call("QueryJobs", [4242], ["id", "status"]) == [[4242, None]]

    def test_list_archived_shows_live_and_archived(
        self, daemon: Daemon, master: Conn, query: Conn
    ) -> None:
        """``gnt-job list --archived`` adds the ``archived`` field and lists both."""
        old = master.call("SubmitJob", [dummy()])
        daemon.wait_job(old)
        assert master.call("ArchiveJob", old) is True
        live = master.call("SubmitJob", [dummy()])
        daemon.wait_job(live)
        (definition,) = query.call("QueryFields", "job", ["archived"])["fields"]
        assert (definition["name"], definition["kind"]) == ("archived", "bool")
        fields = ["id", "status", "summary", "archived"]
        answer = query.call("Query", "job", fields, None)
        assert plain(answer["data"]) == [
            [old, "success", ["TEST_DUMMY"], True],
            [live, "success", ["TEST_DUMMY"], False],
        ]
        without = query.call("Query", "job", ["id", "status", "summary"], None)
        assert plain(without["data"]) == [[live, "success", ["TEST_DUMMY"]]]

    def test_wrong_values_are_typed_errors(self, query: Conn) -> None:
        for qfilter, words in (
            (["==", "id", 1.5], "fractional"),
            (["==", "status", True], "string or an integer"),
            (["~", "status", "x"], "Invalid filter operator"),
            (["=~", "status", "(a)\\1"], "'(a)\\\\1'"),
        ):
            answer = query.ask("Query", "job", ["id"], qfilter)
            assert answer["success"] is False
            assert answer["result"][0] == "OpPrereqError", answer
            message, ecode = answer["result"][1]
            assert words in message and ecode == "wrong_input", answer


class TestGntDebugLocks:
    def test_owners_and_pending_are_strings(
        self, daemon: Daemon, master: Conn, query: Conn
    ) -> None:
        holder = running(daemon, master)
        waiter = master.call("SubmitJob", [{**dummy(), "depends": [[holder, []]]}])
        wait_until(lambda: daemon.client().query_jobs([waiter], ["status"])[0][0] == "waiting")
        fields = ["name", "mode", "owner", "pending"]
        rows = plain(query.call("Query", "lock", fields, None)["data"])
        assert ["cluster", "shared", [str(holder)], []] in rows
        assert [f"job/{holder}", None, [], [["job", [str(waiter)]]]] in rows
        for _, _, owner, pending in rows:  # what gnt-debug locks does with them
            ",".join(owner or [])
            for _, names in pending or []:
                ",".join(names)
        kill(daemon, master, holder)


class TestWatcherPause:
    def test_pause_query_and_resume(self, master: Conn, query: Conn) -> None:
        """``gnt-cluster watcher pause 1h`` / ``info`` / ``continue``."""
        assert query.call("QueryConfigValues", ["watcher_pause", "drain_flag"]) == [None, False]
        until = time.time() + 3600
        assert master.call("SetWatcherPause", until) == pytest.approx(until)
        (paused,) = query.call("QueryConfigValues", ["watcher_pause"])
        assert paused == pytest.approx(until)
        assert master.call("SetWatcherPause", None) is None
        assert query.call("QueryConfigValues", ["watcher_pause"]) == [None]
        past = master.ask("SetWatcherPause", time.time() - 60)
        assert past["result"][0] == "OpPrereqError"
        assert "in the past" in past["result"][1][0]
        # One socket for everything: root is served on the query socket too.
        assert query.ask("SetWatcherPause", None) == {"success": True, "result": None}


class TestHostileFilters:
    """Issue 14: a regular expression or a deep filter must not stall or crash anyone."""

    def test_the_freezing_regex_leaves_everyone_served(
        self, daemon: Daemon, master: Conn, query: Conn
    ) -> None:
        # A live job whose summary is long enough for Python's backtracking
        # matcher to take hours over (.|.|.|.)*Z: 4**21 paths.
        blocker = running(daemon, master, 86400.125)
        assert plain(query.call("Query", "job", ["summary"], None)["data"]) == [
            [["TEST_DELAY(86400.125)"]]
        ]
        exact = b'{"method":"Query","args":["job",["id"],["=~","summary","(.|.|.|.)*Z"]]}\x03'
        answers: list[Any] = []

        def ask_regex() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(120)
                sock.connect(daemon.paths.query_socket)
                sock.sendall(exact)
                answers.append(read_response(sock))

        regex = threading.Thread(target=ask_regex)
        regex.start()
        started = time.monotonic()
        others = Conn(daemon.paths.master_socket)
        try:
            assert others.call("QueryConfigValues", ["drain_flag"]) == [False]
            submitted = others.call("SubmitJob", [dummy()])
            assert others.call("QueryJobs", [blocker], ["status"]) == [["running"]]
        finally:
            others.close()
        assert time.monotonic() - started < BOUND
        assert daemon.wait_job(submitted) == "success"
        regex.join(BOUND)
        assert not regex.is_alive(), "the regex query was not answered"
        assert answers == [{"success": True, "result": {"fields": [
            {"name": "id", "title": "ID", "kind": "number", "doc": "Job ID"}
        ], "data": []}}]  # fmt: skip
        kill(daemon, master, blocker)

    def test_a_filter_nested_500_deep(self, query: Conn) -> None:
        qfilter: Any = ["==", "id", 1]
        for _ in range(499):
            qfilter = ["&", qfilter]
        answer = query.ask("Query", "job", ["id"], qfilter)
        assert answer == {
            "success": False,
            "result": ["OpPrereqError", ["Filter nested deeper than 64 levels; refusing it",
                                         "wrong_input"]],
        }  # fmt: skip
        assert query.call("QueryConfigValues", ["drain_flag"]) == [False]
