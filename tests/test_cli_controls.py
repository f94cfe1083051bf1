"""jobctl's controls of what runs when, against a scripted daemon: job options,
``filter``, ``schedule``, ``queue pause|continue|set-workers``, and how held jobs read."""

from __future__ import annotations

import datetime
import io
import time
from typing import Any

import pytest

from jobqueue import errors
from jobqueue.cli import jobinfo, listing
from jobqueue.cli.context import Context
from jobqueue.cli.main import main
from jobqueue.cli.timespec import parse_duration, parse_time
from tests import fake_luxi as fake
from tests.fake_luxi import FakeLuxi, query_answer

luxi = fake.luxi  # fixtures shared with the other CLI tests
short_dir = fake.short_dir

UUID_A = "8c2f1a2b-1111-4000-8000-000000000001"
UUID_B = "8c2f9999-2222-4000-8000-000000000002"
RULE_FIELDS = ["uuid", "priority", "watermark", "action", "predicates", "reason_trail"]


def jobctl(luxi: FakeLuxi, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), context=Context(luxi.path, stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def rules_answer(*rules: dict[str, Any]) -> Any:
    def answer(what: str, fields: list[str], qfilter: Any) -> dict[str, Any]:
        assert what == "filter" and qfilter is None
        return query_answer(fields, [[rule[name] for name in fields] for rule in rules])

    return answer


def rule(uuid: str, action: Any = "PAUSE", source: str = "jobctl:filter") -> dict[str, Any]:
    return {
        "uuid": uuid,
        "priority": 0,
        "watermark": 41,
        "action": action,
        "predicates": [["opcode", ["=", "OP_ID", "OP_COMMAND_RUN"]]],
        "reason_trail": [[source, "maintenance", 1_700_000_000_000_000_000]],
    }


class TestTimes:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("90", 90), ("1.5s", 1.5), ("500ms", 0.5), ("30m", 1800), ("2h", 7200), ("1d", 86400)],
    )
    def test_durations(self, text: str, seconds: float) -> None:
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize("text", ["", "soon", "-5", "5x", "inf", "m"])
    def test_bad_durations(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_duration(text)

    def test_times(self) -> None:
        now = datetime.datetime(2026, 11, 30, 12, 0, 0).timestamp()
        assert parse_time("now", now) == now
        assert parse_time("@1700000000", now) == 1_700_000_000
        assert parse_time("13:30", now) == now + 5400
        assert parse_time("11:00", now) == now + 23 * 3600  # passed today: tomorrow
        assert parse_time("2026-12-01 08:00", now) == now + 20 * 3600
        assert (
            parse_time("2026-12-01T08:00:00+00:00", now)
            == datetime.datetime(2026, 12, 1, 8, tzinfo=datetime.UTC).timestamp()
        )
        with pytest.raises(ValueError):
            parse_time("tea time", now)


class TestJobOptions:
    def test_run_sends_the_options_as_the_second_argument(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 17
        before = time.time()
        code, out, _ = jobctl(
            luxi, "run", "--in", "1h", "--retries", "3", "--retry-delay", "10s",
            "--retry-backoff", "2", "--retry-max-delay", "5m", "--job-timeout", "2h", "--", "true",
        )  # fmt: skip
        assert (code, out) == (0, "17\n")
        (ops, options) = luxi.args_of("SubmitJob")[0]
        assert ops[0]["argv"] == ["true"]
        assert before + 3600 <= options.pop("start_at") <= time.time() + 3600
        assert options == {
            "retries": 3,
            "retry_delay": 10,
            "retry_backoff": 2,
            "retry_max_delay": 300,
            "timeout": 7200,
        }

    def test_without_options_the_call_is_ganeti_s(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = 17
        assert jobctl(luxi, "delay", "0")[0] == 0
        assert len(luxi.args_of("SubmitJob")[0]) == 1

    def test_several_jobs_get_the_same_options(self, luxi: FakeLuxi, tmp_path: Any) -> None:
        luxi.answers["SubmitManyJobs"] = [[True, 5], [True, 6]]
        path = tmp_path / "jobs.json"
        path.write_text('[[{"OP_ID": "OP_TEST_DELAY"}], [{"OP_ID": "OP_TEST_DELAY"}]]')
        assert jobctl(luxi, "submit", str(path), "--at", "@2000000000")[0] == 0
        assert luxi.args_of("SubmitManyJobs")[0][1] == {"start_at": 2_000_000_000}

    def test_retry_options_need_retries(self, luxi: FakeLuxi) -> None:
        code, _, err = jobctl(luxi, "delay", "0", "--retry-delay", "5")
        assert (code, err) == (2, "--retry-delay needs --retries\n")
        assert luxi.methods() == []

    def test_at_and_in_exclude_each_other(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            main(["delay", "0", "--at", "12:00", "--in", "5m"])
        assert "not allowed with" in capsys.readouterr().err

    def test_a_rejected_job_names_the_rule(self, luxi: FakeLuxi) -> None:
        def refuse(*_: Any) -> Any:
            raise errors.JobRejected(f"Job refused by filter rule {UUID_A}", UUID_A)

        luxi.answers["SubmitJob"] = refuse
        code, _, err = jobctl(luxi, "delay", "0")
        assert code == 1
        assert err == (
            f"Job refused by filter rule {UUID_A}; 'jobctl filter info {UUID_A}' shows the rule\n"
        )


class TestSchedule:
    def test_each_job_is_changed(self, luxi: FakeLuxi) -> None:
        luxi.answers["ChangeJobStartTime"] = lambda job_id, start: (
            [True, "ok"] if job_id == 3 else [False, f"Job {job_id} is running"]
        )
        code, out, err = jobctl(luxi, "schedule", "3", "4", "--now")
        assert (code, out, err) == (1, "Job 3 starts as soon as a worker is free\n",
                                    "Job 4 is running\n")  # fmt: skip
        assert luxi.args_of("ChangeJobStartTime") == [[3, None], [4, None]]
        jobctl(luxi, "schedule", "3", "--at", "@2000000000")
        assert luxi.args_of("ChangeJobStartTime")[-1] == [3, 2_000_000_000]


class TestFilter:
    def test_add_builds_predicates_and_the_reason_trail(self, luxi: FakeLuxi) -> None:
        luxi.answers["ReplaceFilter"] = UUID_A
        code, out, _ = jobctl(
            luxi, "filter", "add", "--opcode", "OP_COMMAND_RUN", "--jobid", '[">", "id", 5]',
            "--reason", "cron", "--rate-limit", "3", "--priority", "2", "--comment", "why",
        )  # fmt: skip
        assert (code, out) == (0, f"{UUID_A}\n")
        ((uuid, priority, predicates, action, trail),) = luxi.args_of("ReplaceFilter")
        assert (uuid, priority, action) == (None, 2, ["RATE_LIMIT", 3])
        assert predicates == [
            ["jobid", [">", "id", 5]],
            ["opcode", ["==", "OP_ID", "OP_COMMAND_RUN"]],
            ["reason", ["==", "source", "cron"]],
        ]
        assert trail[0][:2] == ["jobctl:filter", "why"]

    def test_add_needs_an_action(self, luxi: FakeLuxi) -> None:
        assert jobctl(luxi, "filter", "add")[0] == 2

    def test_replace_and_delete_take_a_unique_prefix(self, luxi: FakeLuxi) -> None:
        luxi.answers["Query"] = rules_answer(rule(UUID_A), rule(UUID_B))
        luxi.answers["ReplaceFilter"] = UUID_A
        luxi.answers["DeleteFilter"] = True
        assert jobctl(luxi, "filter", "add", "--uuid", "8c2f1", "--action", "ACCEPT")[0] == 0
        assert luxi.args_of("ReplaceFilter")[0][0] == UUID_A
        code, _, err = jobctl(luxi, "filter", "delete", "8c2f")
        assert (code, err) == (1, "8c2f names 2 filter rules; give more of the uuid\n")
        assert jobctl(luxi, "filter", "delete", "ffff")[0] == 7
        assert jobctl(luxi, "filter", "delete", "8c2f9")[1] == f"Filter rule {UUID_B} deleted\n"
        assert luxi.args_of("DeleteFilter") == [[UUID_B]]

    def test_list_and_info(self, luxi: FakeLuxi) -> None:
        luxi.answers["Query"] = rules_answer(rule(UUID_A), rule(UUID_B, ["RATE_LIMIT", 3]))
        code, out, _ = jobctl(luxi, "filter", "list")
        lines = out.splitlines()
        assert code == 0 and lines[0].split() == ["UUID", "Priority", "Watermark", "Action",
                                                  "Predicates"]  # fmt: skip
        assert lines[2].split()[:5] == [UUID_B, "0", "41", "RATE_LIMIT", "3"]
        code, out, _ = jobctl(luxi, "filter", "info", "8c2f9")
        assert code == 0 and out.splitlines()[:4] == [
            f"Filter rule {UUID_B}",
            "  Priority: 0",
            "  Watermark: 41",
            "  Action: RATE_LIMIT 3",
        ]
        assert "jobctl:filter: maintenance" in out


class TestQueueControls:
    def test_pause_adds_one_rule_and_continue_deletes_it(self, luxi: FakeLuxi) -> None:
        rules: list[dict[str, Any]] = []
        luxi.answers["Query"] = lambda what, fields, qfilter: rules_answer(*rules)(
            what, fields, qfilter
        )

        def replace(uuid: Any, priority: int, predicates: Any, action: Any, trail: Any) -> str:
            rules.append({**rule(UUID_A, action, trail[0][0]), "predicates": predicates})
            return UUID_A

        luxi.answers["ReplaceFilter"] = replace
        luxi.answers["DeleteFilter"] = lambda uuid: rules.clear() or True
        code, out, _ = jobctl(luxi, "queue", "pause", "--comment", "db upgrade")
        assert code == 0 and out.startswith(f"Queue paused (filter rule {UUID_A})")
        assert luxi.args_of("ReplaceFilter")[0][1:4] == [
            0,
            [["jobid", [">", "id", "watermark"]]],
            "PAUSE",
        ]
        assert luxi.args_of("ReplaceFilter")[0][4][0][:2] == ["jobctl:queue-pause", "db upgrade"]
        assert "paused already" in jobctl(luxi, "queue", "pause")[1]
        assert len(luxi.args_of("ReplaceFilter")) == 1
        assert jobctl(luxi, "queue", "continue")[1] == (
            f"Queue continues (filter rule {UUID_A} deleted)\n"
        )
        assert jobctl(luxi, "queue", "continue")[1] == "The queue was not paused\n"

    def test_set_workers(self, luxi: FakeLuxi) -> None:
        luxi.answers["SetMaxRunningJobs"] = True
        assert jobctl(luxi, "queue", "set-workers", "8") == (0, "Workers: 8\n", "")
        assert luxi.args_of("SetMaxRunningJobs") == [[8]]
        assert jobctl(luxi, "queue", "set-workers")[0] == 2
        assert jobctl(luxi, "queue", "drain", "3")[0] == 2


class TestHeldJobsRead:
    def test_list_shows_why_a_job_is_held(self) -> None:
        row = {
            "id": [0, 4],
            "status": [0, "queued"],
            "hold": [0, {"kind": "paused", "filter": UUID_A}],
        }
        assert listing.cell_text("status", row, 0.0, {}) == "queued (paused by filter 8c2f1a2b)"
        assert listing.cell_text("status", {**row, "hold": [3, None]}, 0.0, {}) == "queued"

    def test_info_shows_holds_retries_attempts_and_the_limit(self) -> None:
        job = {
            "id": 4,
            "status": "queued",
            "hold": {"kind": "scheduled", "at": [1_800_000_000, 0], "attempt": 2},
            "not_before": [1_800_000_000, 0],
            "retry": {"retries": 3, "delay": 10.0, "backoff": 2.0, "max_delay": None},
            "attempt": 2,
            "attempts": [
                {"attempt": 1, "opcode": 0, "end": [1_799_999_990, 0],
                 "error": ["OpExecError", ["exit code 1"]]}
            ],
            "timeout": 600.0,
        }  # fmt: skip
        lines = jobinfo.control_lines(job)
        assert lines[0].startswith("Held: attempt 2 scheduled for ")
        assert lines[2:5] == [
            "Retries: 3 (delay 10s, backoff 2.0)",
            "Attempt: 2 of 4",
            "Failed attempts:",
        ]
        assert lines[5].endswith(": OpExecError: exit code 1")
        assert lines[6] == "Time limit: 600s from its first start"
        assert jobinfo.control_lines({"id": 5, "status": "success", "attempt": 1}) == []
