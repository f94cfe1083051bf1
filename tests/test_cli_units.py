"""Pure unit tests of the jobctl helpers: no daemon, and no subprocess but the
one that checks what jobctl imports at start-up."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from jobqueue import errors
from jobqueue.cli import formatting, jobinfo, listing, lookup, opbuild, selection, waiting
from jobqueue.cli.exitcodes import ExitCode, describe_error
from jobqueue.cli.follow import Progress, failure_reason
from jobqueue.cli.parser import COMMANDS, build_parser, find_command, is_read_only, parse
from jobqueue.cli.timespec import AGE_ALL, parse_age, parse_timespec


def local(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


class TestTimespec:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("0", 0),
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("6h", 21600),
            ("2d", 172800),
            ("1w", 604800),
            (" 3H ", 10800),
        ],
    )
    def test_valid(self, text: str, seconds: int) -> None:
        assert parse_timespec(text) == seconds

    @pytest.mark.parametrize("text", ["", "h", "-5", "1.5h", "5x", "5 h", "١٢", "all"])
    def test_invalid(self, text: str) -> None:
        with pytest.raises(ValueError, match="Invalid time specification"):
            parse_timespec(text)

    def test_all_is_minus_one(self) -> None:
        assert parse_age("all") == AGE_ALL == -1
        assert parse_age("ALL") == -1
        assert parse_age("1d") == 86400


class TestSelection:
    def test_ids_and_statuses(self) -> None:
        assert selection.job_filter([1, 2], []) == ["|", ["=", "id", 1], ["=", "id", 2]]
        assert selection.job_filter([], ["queued"]) == ["|", ["=", "status", "queued"]]
        assert selection.job_filter([], []) is None
        assert selection.job_filter([7], ["queued", "waiting", "queued"]) == [
            "&",
            ["|", ["=", "id", 7]],
            ["|", ["=", "status", "queued"], ["=", "status", "waiting"]],
        ]

    def test_status_groups(self) -> None:
        assert selection.PENDING == ("queued", "waiting")
        assert set(selection.FINISHED) == {"success", "error", "canceled"}


class TestOpbuild:
    def test_depends(self) -> None:
        assert opbuild.parse_depends("12") == [12, []]
        assert opbuild.parse_depends("12:success,error") == [12, ["success", "error"]]
        assert opbuild.parse_depends("-1:canceled") == [-1, ["canceled"]]
        with pytest.raises(ValueError, match="Invalid status 'running'"):
            opbuild.parse_depends("3:running")
        with pytest.raises(ValueError, match="Invalid job id"):
            opbuild.parse_depends("x:success")

    def test_env(self) -> None:
        assert opbuild.parse_env("A=b=c") == ("A", "b=c")
        assert opbuild.parse_env("A=") == ("A", "")
        for bad in ("A", "=b"):
            with pytest.raises(ValueError, match="KEY=VALUE"):
                opbuild.parse_env(bad)

    def test_fanout_with_then(self) -> None:
        opcode = opbuild.fanout_opcode(
            ["ping", "{item}"], ["a", "b"], ["host:{item}"], "echo 'all done'"
        )
        assert opcode == {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": ["ping", "{item}"],
            "items": ["a", "b"],
            "locks": ["host:{item}"],
            "then": [opbuild.run_opcode(["echo", "all done"])],
        }
        assert opbuild.fanout_opcode(["x"], ["a"]) == {
            "OP_ID": "OP_COMMAND_FANOUT",
            "argv": ["x"],
            "items": ["a"],
            "locks": [],
        }
        extras = opbuild.fanout_opcode(
            ["x"], ["a"], shared_locks=["s:{item}"], timeout=5.0, env={"A": "1"}
        )
        assert (extras["shared_locks"], extras["timeout"], extras["env"]) == (
            ["s:{item}"],
            5.0,
            {"A": "1"},
        )
        with pytest.raises(ValueError, match="closing quotation"):
            opbuild.fanout_opcode(["x"], ["a"], then_command="echo 'oops")
        with pytest.raises(ValueError, match="No items"):
            opbuild.fanout_opcode(["x"], [])

    def test_parse_jobs(self) -> None:
        one = '[{"OP_ID": "OP_TEST_DELAY", "duration": 1}]'
        assert opbuild.parse_jobs(one) == ([[{"OP_ID": "OP_TEST_DELAY", "duration": 1}]], False)
        many, is_many = opbuild.parse_jobs(f"[{one}, {one}]")
        assert is_many and len(many) == 2
        for bad, message in [
            ("{", "Not valid JSON"),
            ("[]", "non-empty list"),
            ('[{"duration": 1}]', "OP_ID"),
            ("[[]]", "Job 1"),
        ]:
            with pytest.raises(ValueError, match=message):
                opbuild.parse_jobs(bad)

    def test_apply_options_copies(self) -> None:
        job = [{"OP_ID": "X"}]
        result = opbuild.apply_options(job, -10, [[3, ["success"]]], "hello")
        assert result == [
            {"OP_ID": "X", "priority": -10, "depends": [[3, ["success"]]], "comment": "hello"}
        ]
        assert job == [{"OP_ID": "X"}]
        assert opbuild.apply_options(job) == job

    def test_retry_drops_depends_and_sets_comment(self) -> None:
        ops = [{"OP_ID": "X", "depends": [[1, []]], "comment": "old", "priority": 10}]
        assert opbuild.retry_job(ops, 4) == [
            {"OP_ID": "X", "comment": "Retry of job 4", "priority": 10}
        ]

    def test_items_file(self) -> None:
        assert opbuild.parse_items("a\n\n# comment\n  b  \n") == ["a", "b"]


class TestFormatting:
    def test_timestamps(self) -> None:
        assert formatting.format_timestamp([1700000000, 5]) == local(1700000000)
        assert formatting.format_timestamp(None) == "-"
        assert formatting.format_timestamp("junk") == "?"
        assert formatting.format_value("opstart", [[1700000000, 0], None]) == (
            f"{local(1700000000)},-"
        )

    def test_values(self) -> None:
        assert formatting.format_value("summary", ["A(1)", "B"]) == "A(1),B"
        assert formatting.format_value("x", True) == "Y"
        assert formatting.format_value("x", None) == "-"
        assert formatting.format_value("ops", [{"b": 1, "a": 2}]) == '[{"a":2,"b":1}]'

    def test_cells_by_status(self) -> None:
        assert [formatting.format_cell("id", [status, 1]) for status in range(5)] == [
            "1",
            "??",
            "*",
            "-",
            "*",
        ]

    def test_table_alignment(self) -> None:
        lines = formatting.render_table(
            ["ID", "Status"], [["1", "running"], ["100", "ok"]], [True, False]
        )
        assert lines == [" ID Status", "  1 running", "100 ok"]
        assert formatting.render_table(None, [["1", "a"]], [True, False], "|") == ["1|a"]

    def test_query_to_objects(self) -> None:
        answer = {
            "fields": [
                {"name": "id", "title": "ID", "kind": "text", "doc": ""},
                {"name": "bogus", "title": "bogus", "kind": "unknown", "doc": ""},
            ],
            "data": [[[0, 5], [1, None]], [[0, 10], [1, None]]],
        }
        assert formatting.query_to_objects(answer) == [
            {"id": 5, "bogus": None},
            {"id": 10, "bogus": None},
        ]

    def test_lock_row(self) -> None:
        row = [[0, "job/27"], [0, None], [0, None], [0, [["job", [34, 21]], ["shared", ["w1"]]]]]
        assert formatting.format_lock_row(row) == ["job/27", "-", "-", "job:34,21 shared:w1"]
        row = [[0, "a"], [0, "exclusive"], [0, ["Jq1", "Jq2"]], [0, []]]
        assert formatting.format_lock_row(row) == ["a", "exclusive", "Jq1,Jq2", "-"]

    def test_log_message_escapes_control_characters(self) -> None:
        assert formatting.format_log_message("a\tb\x1b") == "a\\tb\\x1b"
        assert formatting.format_log_message(42) == "42"


class TestJobInfo:
    def job(self) -> dict[str, Any]:
        return {
            "id": 3,
            "status": "error",
            "priority": 0,
            "received_ts": [1700000000, 0],
            "start_ts": [1700000001, 500000],
            "end_ts": [1700000003, 0],
            "ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 1, "repeat": 0}],
            "opstatus": ["error"],
            "opresult": [["OpExecError", ["boom"]]],
            "oplog": [[[1, [1700000002, 0], "message", "sleeping"], "junk"]],
            "opstart": [[1700000001, 500000]],
            "opexec": [None],
            "opend": [[1700000003, 0]],
        }

    def test_report(self) -> None:
        lines = jobinfo.job_lines(self.job())
        assert lines[:3] == ["Job ID: 3", "  Status: error", "  Priority: 0"]
        assert f"  Processing start: {local(1700000001)} (delta 1.500000s)" in lines
        assert "  Total processing time: 3.000000 seconds" in lines
        assert "    - OP_TEST_DELAY" in lines
        assert "          duration: 1" in lines
        assert "        Result: OpExecError: boom" in lines
        assert f"          1 {local(1700000002)} message sleeping" in lines
        assert '          "junk"' in lines
        assert "        Execution start: -" in lines
        assert not any("OP_ID:" in line for line in lines)

    def test_results(self) -> None:
        assert jobinfo.describe_result({"a": 1}) == '{"a":1}'
        assert jobinfo.describe_result(None) == "null"  # as inside structures: one style
        assert jobinfo.describe_result(True) == "true"
        assert jobinfo.describe_result([None, 1]) == "[null,1]"
        assert jobinfo.describe_result("text") == "text"
        assert jobinfo.describe_result(1.5) == "1.5"
        job = self.job()
        job["opresult"] = [{"jobs": [[True, 4]]}]
        assert "          jobs: [[true,4]]" in jobinfo.job_lines(job)


class TestFailureReason:
    def test_reasons(self) -> None:
        assert failure_reason("canceled", None, None) == "Job was canceled"
        assert failure_reason("error", ["error"], [["OpExecError", ["boom"]]]) == "boom"
        assert (
            failure_reason("error", ["success", "error"], [1, ["OpPrereqError", ["bad", "x"]]])
            == "partial failure (opcode 1): bad"
        )
        assert failure_reason("error", ["error"], ["Unclean master daemon shutdown"]) == (
            "Unclean master daemon shutdown"
        )
        assert failure_reason("lost", None, None) == "Job lost"


class TestProgress:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    def test_rewrites_one_line_on_a_terminal(self) -> None:
        stream = self.Tty()
        progress = Progress(stream)
        progress.show(17, 2, 40)
        progress.show(40, 2, 43, 3)
        progress.done()
        assert stream.getvalue() == (
            "\r17/40 finished, 2 failed\x1b[K"
            "\r40/43 finished, 2 failed (3 submitted by the jobs)\x1b[K\n"
        )

    def test_silent_elsewhere(self) -> None:
        stream = io.StringIO()
        progress = Progress(stream)
        progress.show(1, 0, 3)
        progress.done()
        assert stream.getvalue() == ""


class TestExitCodes:
    @pytest.mark.parametrize(
        ("error", "code", "text"),
        [
            (
                errors.NoMasterError("x"),
                ExitCode.NO_DAEMON,
                "Cannot reach the job queue daemon at /s",
            ),
            (
                errors.AccessDenied("Permission denied connecting"),
                ExitCode.PERMISSION,
                "Permission",
            ),
            (errors.AccessDenied("method not allowed"), ExitCode.PERMISSION, "Permission denied: "),
            (errors.JobQueueDrainError("x"), ExitCode.DRAINED, "The job queue is drained"),
            (errors.JobQueueFull("x"), ExitCode.QUEUE_FULL, "The job queue is full"),
            (errors.JobLost("Job 4 not found"), ExitCode.NOT_FOUND, "Job 4 not found"),
            (
                errors.NotMasterError("This daemon is a standby; the master is b", "b"),
                ExitCode.NOT_MASTER,
                "This daemon is a standby; the master is b",
            ),
            (errors.OpPrereqError("bad\nthing"), ExitCode.FAILURE, "Request refused: bad thing"),
            (errors.RequestTimeout("slow"), ExitCode.FAILURE, "The job queue daemon did not"),
        ],
    )
    def test_mapping(self, error: errors.GenericError, code: ExitCode, text: str) -> None:
        got_code, message = describe_error(error, "/s")
        assert got_code == code
        assert message.startswith(text) and "\n" not in message

    def test_table_values_are_documented_numbers(self) -> None:
        assert {code.name: int(code) for code in ExitCode} == {
            "OK": 0,
            "FAILURE": 1,
            "USAGE": 2,
            "NO_DAEMON": 3,
            "PERMISSION": 4,
            "DRAINED": 5,
            "QUEUE_FULL": 6,
            "NOT_FOUND": 7,
            "NOT_MASTER": 8,
            "DECLINED": 13,
            "UNKNOWN_FIELD": 14,
            "INTERRUPTED": 130,
        }


class TestParser:
    def test_find_command_skips_global_options(self) -> None:
        assert find_command(["--socket", "list", "info", "3"]) == "info"
        assert find_command(["--socket=x", "--debug", "list"]) == "list"
        assert find_command(["--help"]) is None
        assert find_command(["-h", "list"]) is None
        assert find_command(["bogus"]) == "bogus"

    def test_every_command_parses_its_help(self) -> None:
        parser = build_parser()
        for name in COMMANDS:
            with pytest.raises(SystemExit) as exc:
                parser.parse_args([name, "--help"])
            assert exc.value.code == 0

    def test_run_takes_everything_after_the_double_dash(self) -> None:
        args = build_parser("run").parse_args(
            ["run", "--lock", "a", "--", "ls", "-l", "--lock", "b"]
        )
        assert args.argv == ["ls", "-l", "--lock", "b"]
        assert args.lock == ["a"]

    def test_global_options_after_the_command(self) -> None:
        args = build_parser("list").parse_args(["--socket", "/a", "list", "--debug"])
        assert (args.socket, args.debug) == ("/a", True)
        args = build_parser("list").parse_args(["list", "--socket", "/b"])
        assert args.socket == "/b"


class TestStartup:
    def test_no_slow_modules_on_the_import_path(self) -> None:
        """jobctl's modules leave out what would slow every start (see the modules)."""
        commands = {
            f"jobqueue.cli.{reference.split(':')[0]}"
            for spec in COMMANDS.values()
            for reference in (spec.handler, spec.arguments)
        }
        modules = ["jobqueue.cli.main", "jobqueue.luxi.client", *sorted(commands)]
        slow = ["typing", "simplejson", "decimal", "threading", "dataclasses", "inspect", "socket"]
        code = (
            f"import sys; before = set(sys.modules); import {', '.join(modules)}; "
            f"print([name for name in {slow!r} if name in set(sys.modules) - before])"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            timeout=60,
            check=True,
        )
        assert result.stdout.strip() == "[]"

    def test_only_the_running_commands_arguments_are_imported(self) -> None:
        """Parsing ``list`` imports the module adding its arguments, not the others'."""
        code = (
            "import sys; from jobqueue.cli.parser import parse; parse(['list', '--pending']); "
            "print(sorted(name for name in sys.modules if name.startswith('jobqueue.cli.args_')))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            timeout=60,
            check=True,
        )
        assert result.stdout.strip() == "['jobqueue.cli.args_common', 'jobqueue.cli.args_query']"


class TestTimesAndDurations:
    def test_iso_8601_in_utc(self) -> None:
        assert formatting.iso_timestamp([1700000000, 250000]) == "2023-11-14T22:13:20.250000Z"
        assert formatting.iso_timestamp([1700000000, 1_500_000]) == "2023-11-14T22:13:21.500000Z"
        assert formatting.iso_timestamp(None) is None
        assert formatting.json_value("opstart", [[1700000000, 0], None]) == [
            "2023-11-14T22:13:20.000000Z",
            None,
        ]
        assert formatting.json_value("oplog", [[[1, [1700000000, 0], "message", "m"]], []]) == [
            [[1, "2023-11-14T22:13:20.000000Z", "message", "m"]],
            [],
        ]
        assert formatting.json_value("summary", ["A"]) == ["A"]

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (-1, "0.0s"),
            (0.42, "0.4s"),
            (9.96, "10.0s"),
            (12, "12s"),
            (185, "3m 05s"),
            (7800, "2h 10m"),
            (3 * 86400 + 4 * 3600 + 59, "3d 04h"),
        ],
    )
    def test_durations_in_two_units_at_most(self, seconds: float, text: str) -> None:
        assert formatting.format_duration(seconds) == text

    def test_one_format_for_people(self) -> None:
        assert formatting.format_time(1700000000) == local(1700000000)
        assert formatting.format_timestamp([1700000000, 0]) == local(1700000000)


class TestTables:
    def test_width_cuts_the_last_column(self) -> None:
        rows = [["1", "a long summary here"], ["22", "short"]]
        lines = formatting.render_table(None, rows, [True, False], width=12)
        assert lines == [" 1 a long...", "22 short"]
        assert formatting.render_table(None, rows, [True, False], "|", width=5) == [
            "1|a long summary here",
            "22|short",
        ]

    def test_colours_do_not_count_for_the_padding(self) -> None:
        lines = formatting.render_table(
            ["S", "X"],
            [["ok", "1"], ["error", "2"]],
            [False, True],
            colours=[["32", None], ["31", None]],
        )
        assert lines == ["S     X", "\x1b[32mok\x1b[0m    1", "\x1b[31merror\x1b[0m 2"]

    def test_shorten_and_count(self) -> None:
        assert formatting.shorten("abcdef", 6) == "abcdef"
        assert formatting.shorten("abcdefg", 6) == "abc..."
        assert formatting.shorten("abcdefg", 2) == "ab"
        assert (formatting.count_of(1, "job"), formatting.count_of(3, "job")) == ("1 job", "3 jobs")


def cells(**values: Any) -> dict[str, list[Any]]:
    return {name: [0, value] if value is not None else [3, None] for name, value in values.items()}


class TestListing:
    def test_fields_asked_of_the_daemon(self) -> None:
        assert listing.daemon_fields(["id", "elapsed"], False) == [
            "id",
            "status",
            "received_ts",
            "start_ts",
            "end_ts",
        ]
        assert listing.daemon_fields(["status"], True) == ["status", "hold", "id"]

    def test_elapsed(self) -> None:
        now = 1000.0
        finished = cells(received_ts=[100, 0], start_ts=[110, 0], end_ts=[130, 500000])
        running = cells(received_ts=[100, 0], start_ts=[900, 0], end_ts=None)
        pending = cells(received_ts=[400, 0], start_ts=None, end_ts=None)
        lock_wait = cells(status="waiting", received_ts=[400, 0], start_ts=[990, 0], end_ts=None)
        canceled = cells(received_ts=[100, 0], start_ts=None, end_ts=[160, 0])
        assert listing.elapsed_seconds(finished, now) == 20.5
        assert listing.elapsed_seconds(running, now) == 100.0
        assert listing.elapsed_seconds(pending, now) == 600.0
        assert listing.elapsed_seconds(lock_wait, now) == 600.0  # since submitted
        assert listing.elapsed_seconds(canceled, now) == 60.0
        assert listing.elapsed_seconds(cells(received_ts=None), now) is None

    def test_command_lines(self) -> None:
        ops = [
            {"OP_ID": "OP_TEST_DELAY", "duration": 5},
            {"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", "echo hi; exit 1"]},
            {"OP_ID": "OP_COMMAND_FANOUT", "argv": ["ssh", "{item}", "true"], "items": ["a", "b"]},
        ]
        summary = ["TEST_DELAY(5)", "COMMAND_RUN(sh)", "COMMAND_FANOUT(ssh x2)"]
        assert listing.command_summary(ops, summary) == [
            "TEST_DELAY(5)",
            "sh -c 'echo hi; exit 1'",
            "fanout x2: ssh '{item}' true",
        ]
        assert listing.command_summary(ops, summary[:2]) is None
        assert listing.needs_command_lines(cells(summary=summary))
        assert not listing.needs_command_lines(cells(summary=["TEST_DELAY(5)"]))


class TestLookupAndWaiting:
    def test_submitted_jobs_from_results(self) -> None:
        opresult = [
            None,
            {"jobs": [[True, 4], [False, "refused"], [True, True]]},
            {"jobs": [[True, 9]]},
        ]
        assert lookup.submitted_jobs(opresult) == [4, 9]
        assert lookup.submitted_jobs("junk") == []

    def test_reasons_in_words(self) -> None:
        lock = {
            "kind": "lock",
            "lock": "db",
            "mode": "exclusive",
            "held": "shared",
            "owners": [3, 4],
        }
        assert waiting.describe(lock) == "for lock db (exclusive), held shared by jobs 3, 4"
        assert waiting.describe({**lock, "held": "exclusive", "owners": [3]}) == (
            "for lock db (exclusive), held by job 3"
        )
        assert waiting.describe({**lock, "owners": []}) == "for lock db (exclusive)"
        assert waiting.describe({"kind": "job", "job": "12"}) == "for job 12 to end"
        assert waiting.describe({"kind": "mystery", "at": 5}) == 'for {"at":5,"kind":"mystery"}'
        uuid = "8c2f1a2b-0000-4000-8000-000000000000"
        paused = {"kind": "paused", "filter": uuid}
        assert waiting.describe(paused) == "paused by filter 8c2f1a2b"
        limited = {"kind": "rate_limited", "filter": uuid, "limit": 3}
        assert waiting.describe(limited) == "rate limited by filter 8c2f1a2b (3 at once)"
        at = [1_800_000_000, 0]
        when = formatting.format_timestamp(at)
        assert waiting.describe({"kind": "scheduled", "at": at}) == f"scheduled for {when}"
        retry = {"kind": "scheduled", "at": at, "attempt": 2}
        assert waiting.describe(retry) == f"attempt 2 scheduled for {when}"
        assert waiting.state_line("queued", [paused]) == "Queued, paused by filter 8c2f1a2b"
        worker = {"kind": "worker", "workers": 2, "busy": 2}
        assert waiting.state_line("queued", [worker]) == (
            "Queued, waiting for a free worker (2 of 2 busy)"
        )
        assert waiting.state_line("waiting", [lock, {"kind": "job", "job": "7"}]) == (
            "Waiting for lock db (exclusive), held shared by jobs 3, 4; for job 7 to end"
        )


class TestUsageErrors:
    def test_one_line_and_a_hint(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exc:
            parse(["list", "--bogus"])
        assert exc.value.code == 2
        assert capsys.readouterr().err == (
            "jobctl list: unrecognized arguments: --bogus\n"
            "Try 'jobctl list --help' for more information.\n"
        )

    def test_read_only_commands(self) -> None:
        def parsed(*words: str) -> Any:
            return build_parser(words[0]).parse_args(list(words))

        assert is_read_only(parsed("list")) and is_read_only(parsed("queue", "info"))
        assert not is_read_only(parsed("queue", "drain"))
        assert not is_read_only(parsed("cancel", "1"))

    def test_list_help_names_the_default_fields(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            parse(["list", "--help"])
        assert f"(default {','.join(listing.DEFAULT_FIELDS)})" in capsys.readouterr().out
