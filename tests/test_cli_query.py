"""``jobctl list``, ``list-fields``, ``info`` and ``locks`` against a scripted daemon."""

from __future__ import annotations

import json

import pytest

from tests import test_cli_fakeluxi as fake
from tests.test_cli_commands import ARCHIVED, JOBS
from tests.test_cli_fakeluxi import FakeLuxi, JobTable, run_jobctl

luxi = fake.luxi  # fixtures shared with the other CLI tests
short_dir = fake.short_dir


@pytest.fixture
def fake_daemon(luxi: FakeLuxi) -> FakeLuxi:
    JobTable(JOBS, ARCHIVED).install(luxi)
    return luxi


class TestList:
    def test_default_table(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list")
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.splitlines() == [
            "ID Status  Summary",
            " 1 success OP_TEST_DELAY(1.0)",
            " 2 running OP_COMMAND_RUN(ls)",
            "12 queued  OP_TEST_DELAY(5),OP_TEST_DELAY(1)",
        ]
        assert fake_daemon.args_of("Query") == [["job", ["id", "status", "summary"], None]]

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
            "ID Status  Summary            EndTs               Opend",
            " 1 success OP_TEST_DELAY(1.0) 2023-11-14 22:13:22 2023-11-14 22:13:22",
        ]

    def test_archived_uses_the_fourth_argument(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list", "--archived", "--error", "--no-headers")
        assert result.stdout == "3 error OP_COMMAND_RUN(false)\n"
        assert fake_daemon.args_of("Query") == [
            ["job", ["id", "status", "summary"], ["|", ["=", "status", "error"]], True]
        ]

    def test_json(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(
            fake_daemon.path, "list", "12", "-o", "id,priority,end_ts", "--output", "json"
        )
        assert json.loads(result.stdout) == [{"id": 12, "priority": -10, "end_ts": None}]

    def test_unknown_field(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list", "-o", "id,bogus,nope", "--no-headers")
        assert result.returncode == 14
        assert result.stderr == "Warning: Queried for unknown fields bogus, nope\n"
        assert result.stdout.splitlines() == [" 1 ?? ??", " 2 ?? ??", "12 ?? ??"]


class TestListFields:
    def test_all_fields(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list-fields")
        lines = result.stdout.splitlines()
        assert result.returncode == 0
        assert lines[0].split() == ["Name", "Title", "Description"]
        assert lines[1].split() == ["comment", "Comment", "The", "comment"]
        assert len(lines) == 1 + len(fake.JOB_FIELDS)
        assert fake_daemon.args_of("QueryFields") == [["job", None]]

    def test_unknown_field(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "list-fields", "id", "bogus", "--separator", ":")
        assert result.returncode == 14
        assert result.stdout.splitlines()[1:] == [
            "id:ID:The id",
            "bogus:bogus:Unknown field 'bogus'",
        ]
        assert result.stderr == "Warning: Queried for unknown fields bogus\n"


class TestInfo:
    def test_human_report(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "info", "1")
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.splitlines() == [
            "Job ID: 1",
            "  Status: success",
            "  Priority: 0",
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
            "        Result: None",
            "        Execution log:",
            "          1 2023-11-14 22:13:21 message Test delay iteration 1/1",
        ]

    def test_archived_and_missing_jobs(self, fake_daemon: FakeLuxi) -> None:
        result = run_jobctl(fake_daemon.path, "info", "3", "99", "--output", "json")
        assert result.returncode == 7
        assert result.stderr == "Job 99 not found\n"
        assert [job["id"] for job in json.loads(result.stdout)] == [3]
        live, archived = fake_daemon.args_of("Query")
        assert live[2:] == [["|", ["=", "id", 3], ["=", "id", 99]]]
        assert archived[2:] == [["|", ["=", "id", 3], ["=", "id", 99]], True]


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
