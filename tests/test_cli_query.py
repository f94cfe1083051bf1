"""``jobctl list``, ``list-fields``, ``info`` and ``locks`` against a scripted daemon."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator

import pytest

from jobqueue.cli.context import Context
from jobqueue.cli.main import main
from tests import fake_luxi as fake
from tests.cli_samples import ARCHIVED, JOBS
from tests.fake_luxi import FakeLuxi, JobTable, run_jobctl

luxi = fake.luxi  # fixtures shared with the other CLI tests
short_dir = fake.short_dir


@pytest.fixture
def fake_daemon(luxi: FakeLuxi) -> FakeLuxi:
    JobTable(JOBS, ARCHIVED).install(luxi)
    return luxi


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def environ() -> Iterator[dict[str, str]]:
    """``os.environ`` for an in-process run, restored afterwards."""
    saved = dict(os.environ)
    yield os.environ  # type: ignore[misc]
    os.environ.clear()
    os.environ.update(saved)


def in_process(luxi: FakeLuxi, *args: str, tty: bool = False) -> tuple[int, str, str]:
    out, err = Tty() if tty else io.StringIO(), io.StringIO()
    code = main(list(args), context=Context(luxi.path, stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


class TestList:
    def test_default_table(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list")
        assert (result.returncode, result.stderr) == (0, "")
        lines = result.stdout.splitlines()
        assert [lines[i].split(None, 3) for i in (0, 1, 3)] == [
            ["ID", "Status", "Elapsed", "Summary"],
            ["1", "success", "1.2s", "OP_TEST_DELAY(1.0)"],
            ["12", "queued", "-", "OP_TEST_DELAY(5),OP_TEST_DELAY(1)"],
        ]
        # Running since T0 + 61, days by now; the command line, not COMMAND_RUN(ls).
        assert re.fullmatch(r" 2 running +\d+d \d\dh ls -l 'my dir'", lines[2]), lines[2]
        assert lines[1].index("1.2s") + 4 == lines[2].index("h ls") + 1  # aligned right
        assert fake_daemon.args_of("Query") == [
            ["job", ["id", "status", "summary", "received_ts", "start_ts", "end_ts", "hold"], None],
        ]
        assert fake_daemon.args_of("QueryJobs") == [[[2], ["id", "ops"]]]  # the command job's

    def test_unknown_ids(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list", "1", "99999", "-o", "id,status")
        assert (result.returncode, result.stderr) == (7, "Job 99999 not found\n")
        assert result.stdout.splitlines() == ["ID Status", " 1 success"]
        # Filtered out is not unknown: 2 exists but is not pending.
        result = run_jobctl(fake_daemon.path, "list", "2", "98", "--pending", "-o", "id")
        assert (result.returncode, result.stdout, result.stderr) == (
            7,
            "ID\n",
            "Job 98 not found\n",
        )
        assert fake_daemon.args_of("QueryJobs") == [[[2, 98], ["id", "status"]]]

    def test_colours_and_width_on_a_terminal(
        self, fake_daemon: FakeLuxi, environ: dict[str, str]
    ) -> None:
        environ.pop("NO_COLOR", None)
        environ.update(COLUMNS="33", TERM="xterm")
        code, out, _ = in_process(fake_daemon, "list", "1", "12", tty=True)
        assert code == 0
        assert out.splitlines() == [
            "ID Status  Elapsed Summary",
            " 1 \x1b[32msuccess\x1b[0m    1.2s OP_TEST_DEL...",  # cut to 33 columns
            "12 queued        - OP_TEST_DEL...",
        ]
        environ["NO_COLOR"] = "1"
        _, out, _ = in_process(fake_daemon, "list", "1", tty=True)
        assert out.splitlines()[1] == " 1 success    1.2s OP_TEST_DEL..."
        _, out, _ = in_process(fake_daemon, "list", "1")  # not a terminal: as it is
        assert out.splitlines()[1] == " 1 success    1.2s OP_TEST_DELAY(1.0)"

    def test_ids_statuses_and_fields(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(
            fake_daemon.path,
            "list",
            "1",
            "2",
            "12",
            "--pending",
            "--status",
            "running",
            "-o",
            "id,priority,received_ts",
            "--separator",
            "|",
            "--no-headers",
        )
        assert result.returncode == 0
        assert result.stdout.splitlines() == ["2|0|2023-11-14 22:14:20", "12|-10|-"]
        assert fake_daemon.args_of("Query")[0][2] == [
            "&",
            ["|", ["=", "id", 1], ["=", "id", 2], ["=", "id", 12]],
            [
                "|",
                ["=", "status", "running"],
                ["=", "status", "queued"],
                ["=", "status", "waiting"],
            ],
        ]

    def test_plus_fields_and_finished(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list", "-o", "+end_ts,opend", "--finished")
        assert result.stdout.splitlines() == [
            "ID Status  Elapsed Summary            EndTs               Opend",
            " 1 success    1.2s OP_TEST_DELAY(1.0) 2023-11-14 22:13:22 2023-11-14 22:13:22",
        ]

    def test_archived_uses_the_fourth_argument(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(
            fake_daemon.path, "list", "--archived", "--error", "--no-headers", "-o", "id,summary"
        )
        assert result.stdout == "3 OP_COMMAND_RUN(false)\n"
        assert fake_daemon.args_of("Query") == [
            ["job", ["id", "summary"], ["|", ["=", "status", "error"]], True]
        ]

    def test_json(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(
            fake_daemon.path, "list", "12", "-o", "id,priority,end_ts", "--output", "json"
        )
        assert json.loads(result.stdout) == [{"id": 12, "priority": -10, "end_ts": None}]
        result = run_jobctl(fake_daemon.path, "list", "1", "-o", "+opend", "--output", "json")
        assert json.loads(result.stdout) == [
            {
                "id": 1,
                "status": "success",
                "elapsed": 1.25,
                "summary": ["OP_TEST_DELAY(1.0)"],  # as the daemon says
                "opend": ["2023-11-14T22:13:22.250000Z"],
            }
        ]

    def test_unknown_field_is_refused_before_any_row(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list", "-o", "id,bogus,nope", "--no-headers")
        assert (result.returncode, result.stdout) == (14, "")
        assert result.stderr == (
            "Unknown fields bogus, nope; 'jobctl list-fields' shows the fields\n"
        )


class TestListFields:
    def test_all_fields(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list-fields")
        lines = result.stdout.splitlines()
        assert result.returncode == 0
        assert lines[0].split() == ["Name", "Title", "Description"]
        assert lines[1].split() == ["attempt", "Attempt", "The", "attempt"]
        assert lines[4].split()[:3] == ["elapsed", "Elapsed", "Run"]  # jobctl's own
        assert len(lines) == 2 + len(fake.JOB_FIELDS)
        assert fake_daemon.args_of("QueryFields") == [["job", None]]

    def test_named_and_unknown_fields(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list-fields", "elapsed", "id", "--separator", ":")
        assert result.returncode == 0
        assert result.stdout.splitlines()[2] == "id:ID:The id"
        assert fake_daemon.args_of("QueryFields") == [["job", ["id"]]]
        result = run_jobctl(fake_daemon.path, "list-fields", "id", "bogus")
        assert (result.returncode, result.stdout) == (14, "")
        assert result.stderr == "Unknown field bogus; 'jobctl list-fields' shows the fields\n"


class TestInfo:
    def test_human_report(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "info", "1")
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.splitlines() == [
            "Job ID: 1",
            "  Status: success",
            "  Priority: 0",
            "  Submitted by: unknown (stored before submitters were recorded)",
            "  Received: 2023-11-14 22:13:20",
            "  Processing start: 2023-11-14 22:13:21 (delta 1.000000s)",
            "  Processing end: 2023-11-14 22:13:22 (delta 1.250000s)",
            "  Total processing time: 2.250000 seconds",
            "  Opcodes:",
            "    - OP_TEST_DELAY",
            "        Status: success",
            "        Processing start: 2023-11-14 22:13:21",
            "        Execution start: 2023-11-14 22:13:21",
            "        Processing end: 2023-11-14 22:13:22",
            "        Input fields:",
            "          duration: 1.0",
            "          repeat: 0",
            "        Result: null",
            "        Execution log:",
            "          1 2023-11-14 22:13:21 message Test delay iteration 1/1",
        ]

    def test_archived_and_missing_jobs(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "info", "3", "99", "--output", "json")
        assert result.returncode == 7
        assert result.stderr == "Job 99 not found\n"
        assert [job["id"] for job in json.loads(result.stdout)] == [3]
        (asked,) = fake_daemon.args_of("QueryJobs")
        assert asked[0] == [3, 99]  # one call finds live and archived jobs

    def test_json_times_are_iso_8601(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "info", "1", "--output", "json")
        (one,) = json.loads(result.stdout)
        assert one["received_ts"] == "2023-11-14T22:13:20.000000Z"
        assert one["opexec"] == ["2023-11-14T22:13:21.000100Z"]
        assert one["oplog"] == [
            [[1, "2023-11-14T22:13:21.000000Z", "message", "Test delay iteration 1/1"]]
        ]


class TestLocks:
    def test_table(self, luxi: FakeLuxi) -> None:
        luxi.answers["Query"] = {
            "fields": [{"name": n, "title": n, "kind": "other", "doc": ""} for n in "abcd"],
            "data": [
                [[0, "cluster"], [0, "shared"], [0, ["Jq1", "Jq4"]], [0, [["exclusive", ["Jq7"]]]]],
                [[0, "job/27"], [0, None], [0, None], [0, [["job", [34, 21]]]]],
            ],
        }
        result = run_jobctl(luxi.path, "locks")
        assert result.returncode == 0
        assert result.stdout.splitlines() == [
            "Name    Mode   Owner   Pending",
            "cluster shared Jq1,Jq4 exclusive:Jq7",
            "job/27  -      -       job:34,21",
        ]
        assert luxi.args_of("Query") == [["lock", ["name", "mode", "owner", "pending"], None]]
        result = run_jobctl(luxi.path, "locks", "--output", "json")
        assert json.loads(result.stdout)[1] == {
            "a": "job/27",
            "b": None,
            "c": None,
            "d": [["job", [34, 21]]],
        }
