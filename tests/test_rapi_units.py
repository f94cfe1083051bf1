"""jobqueue-rapi's parts without a server: users file, rights, error mapping, exposition."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from jobqueue import errors
from jobqueue.luxi.protocol import MAX_REQUEST_NESTING
from jobqueue.metrics import Metrics, QueueState
from jobqueue.opcodes import MAX_NESTING
from jobqueue.rapi.access import Gate, check_same_origin
from jobqueue.rapi.answers import HttpError, from_luxi
from jobqueue.rapi.exposition import cumulative, render
from jobqueue.rapi.feed import (
    MAX_SEARCH_LENGTH,
    MAX_SEARCH_WORDS,
    Snapshot,
    search_words,
    view,
)
from jobqueue.rapi.main import build_parser
from jobqueue.rapi.master import Master
from jobqueue.rapi.resources import MAX_BODY_NESTING, parse_json
from jobqueue.rapi.users import READ, WRITE, User, UsersFile, UsersFileError, ha1, parse

DOC = Path(__file__).resolve().parent.parent / "doc"


# -- the users file ----------------------------------------------------------------------
def test_parse_ganetis_format() -> None:
    warnings: list[str] = []
    users = parse(
        "# comment\n\n"
        "jack abc123\n"
        "fred {cleartext}foo555 read\n"
        "  autocreator   xyz789   write\n"
        "jessica {HA1}7046452df2cbb530877058712cf17bd4 read,write\n"
        "lonely\n"
        "odd pw frobnicate\n",
        warnings.append,
    )
    assert set(users) == {"jack", "fred", "autocreator", "jessica", "odd"}
    assert users["jack"].rights == {READ}
    assert users["fred"].rights == {READ}
    assert users["autocreator"].rights == {READ, WRITE}
    assert users["jessica"].rights == {READ, WRITE}
    assert users["odd"].rights == {READ}
    assert any("line 7" in w for w in warnings)  # "lonely" has no password
    assert any("frobnicate" in w for w in warnings)


def test_passwords_in_every_scheme() -> None:
    assert User("u", "plain", frozenset()).check_password("plain")
    assert not User("u", "plain", frozenset()).check_password("Plain")
    assert User("u", "{CLEARTEXT}{odd}", frozenset()).check_password("{odd}")
    assert User("u", "{cleartext}x", frozenset()).check_password("x")
    hashed = User("jack", "{HA1}" + ha1("jack", "abc123").upper(), frozenset())
    assert hashed.check_password("abc123")
    assert not hashed.check_password("abc124")
    assert not User("u", "{SHA}whatever", frozenset()).check_password("whatever")
    assert not User("u", "{}", frozenset()).check_password("{}")


def test_ha1_is_the_md5_of_user_realm_and_password() -> None:
    # printf 'jack:Ganeti Remote API:abc123' | md5sum
    assert ha1("jack", "abc123") == "54c12257ee9be413f2f3182435514aae"


def test_users_file_follows_changes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("ann a-pw write\n")
    path.chmod(0o600)
    now = [0.0]
    users = UsersFile(str(path), recheck=1.0, clock=lambda: now[0])
    assert users.get("ann") is not None and users.get("bob") is None
    path.write_text("bob b-pw\n")
    os.utime(path, ns=(1, 10**18))  # a new modification time, whatever the clock's grain
    assert users.get("bob") is None  # not looked at again within a second
    now[0] = 1.5
    assert users.get("bob") is not None and users.get("ann") is None
    path.unlink()
    now[0] = 3.0
    assert users.get("bob") is None  # a removed file locks everyone out


def test_unreadable_users_file_keeps_the_old_users(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("ann a-pw\n")
    now = [0.0]
    users = UsersFile(str(path), clock=lambda: now[0])
    path.unlink()
    path.mkdir()  # cannot be read as a file
    now[0] = 2.0
    assert users.get("ann") is not None


def test_missing_users_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="Cannot read the users file"):
        UsersFile(str(tmp_path / "none"))


def test_a_users_file_others_can_read_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users"
    path.write_text("ann a-pw\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        UsersFile(str(path))
    assert "can be read or written by others" in caplog.text


# -- rights ----------------------------------------------------------------------------
def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    path = tmp_path / "users"
    path.write_text("ann a-pw write\nrita r-pw\n")
    path.chmod(0o600)
    return Gate(UsersFile(str(path)))


def test_gate_rights(gate: Gate) -> None:
    assert gate.admit("GET", READ, basic("rita", "r-pw"), "h").name == "rita"
    assert gate.admit("POST", WRITE, basic("ann", "a-pw"), "h").can_write
    with pytest.raises(HttpError) as refused:
        gate.admit("POST", WRITE, basic("rita", "r-pw"), "h")
    assert refused.value.status == 403
    for headers in ({}, basic("ann", "wrong"), basic("nobody", "a-pw"), {"Authorization": "Basic"}):
        with pytest.raises(HttpError) as challenged:
            gate.admit("GET", READ, headers, "h")
        assert challenged.value.status == 401
        assert challenged.value.headers == {"WWW-Authenticate": 'Basic realm="Ganeti Remote API"'}


def test_anonymous_read_only_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("ann a-pw write\n")
    open_gate = Gate(UsersFile(str(path)), anonymous_read=True)
    assert open_gate.admit("GET", READ, {}, "h").user is None
    with pytest.raises(HttpError) as refused:
        open_gate.admit("DELETE", WRITE, {}, "h")
    assert refused.value.status == 401
    with pytest.raises(HttpError):  # credentials sent are checked all the same
        open_gate.admit("GET", READ, basic("ann", "wrong"), "h")


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, True),
        ({"Origin": "https://q.example:5080"}, True),
        ({"Origin": "https://Q.example:5080", "Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "none"}, True),
        ({"Origin": "https://evil.example"}, False),
        ({"Origin": "https://q.example:5081"}, False),
        ({"Origin": "null"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://q.example:5080"}, False),
    ],
)
def test_same_origin_rule(headers: dict[str, str], allowed: bool) -> None:
    if allowed:
        check_same_origin(headers, "q.example:5080")
    else:
        with pytest.raises(HttpError):
            check_same_origin(headers, "q.example:5080")


# -- errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.JobQueueFull("full"), 503),
        (errors.JobQueueDrainError("drained"), 503),
        (errors.NotMasterError("standby", "other"), 503),
        (errors.NoMasterError("down"), 502),
        (errors.ConnectionClosed("gone"), 502),
        (errors.RequestTimeout("slow"), 504),
        (errors.AccessDenied("Permission denied connecting to the socket /x"), 500),
        (errors.AccessDenied("Permission denied: only the job's submitter ..."), 403),
        (errors.JobLost("Job 4 not found"), 404),
        (errors.OpPrereqError("bad", errors.ECODE_INVAL), 400),
        (errors.OpPrereqError("no such filter", errors.ECODE_NOENT), 404),
        (errors.OpCodeUnknown("OP_X"), 400),
        (errors.OpExecError("boom"), 500),
    ],
)
def test_luxi_errors_map_to_ganetis_statuses(error: errors.GenericError, status: int) -> None:
    assert from_luxi(error).status == status


# -- request bodies ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ["NaN", "[Infinity]", '{"a": -Infinity}', "[1e999]", '{"a": [-1e400]}', "[1, 2, 3.5e999]"],
)
def test_a_body_that_is_not_plain_json_is_refused(text: str) -> None:
    with pytest.raises(HttpError) as refused:
        parse_json(text.encode())
    assert refused.value.status == 400
    assert refused.value.message.startswith("Unable to parse JSON data: ")


def test_a_body_may_nest_up_to_its_bound() -> None:
    deepest = "[" * MAX_BODY_NESTING + "]" * MAX_BODY_NESTING
    assert parse_json(('{"a": ' + deepest[1:-1] + "}").encode()) == {"a": json.loads(deepest[1:-1])}
    for depth in (MAX_BODY_NESTING + 1, 10 * MAX_REQUEST_NESTING):  # the last: a RecursionError
        with pytest.raises(HttpError) as refused:
            parse_json(("[" * depth + "]" * depth).encode())
        assert refused.value.status == 400
        expected = f"nested deeper than {MAX_BODY_NESTING} levels"
        assert expected in refused.value.message


def test_the_body_bound_lies_between_the_masters_two_bounds() -> None:
    # Every opcode the master accepts fits (body, ops list, then 64 levels of opcode),
    # and no body reaches the depth at which the master refuses the whole request
    # (its LUXI request adds the message and its arguments around the body's values).
    assert 2 + MAX_NESTING <= MAX_BODY_NESTING < MAX_REQUEST_NESTING - 2
    assert parse_json(b"[1.5, 1e300, -0.0, 12345678901234567890]") == [
        1.5,
        1e300,
        -0.0,
        12345678901234567890,
    ]


# -- the dashboard's search -------------------------------------------------------------
def _rows(*summaries: list[str]) -> list[dict[str, object]]:
    statuses = ("success", "running", "queued")
    return [
        {"id": number, "status": statuses[number % 3], "summary": summary}
        for number, summary in enumerate(summaries, start=1)
    ]


def test_a_search_matches_jobs_having_every_word_in_any_case() -> None:
    rows = _rows(["COMMAND_RUN(deploy web)"], ["TEST_DELAY(5)"], ["command_run(Deploy db)"])
    snapshot = Snapshot(1, rows, [], {}, None)

    def ids(search: str, statuses: frozenset[str] = frozenset()) -> list[object]:
        return [row["id"] for row in view(snapshot, statuses, search_words(search))["jobs"]]

    assert ids("") == [3, 2, 1]  # newest first
    assert ids("deploy") == [3, 1]
    assert ids("Deploy  WEB") == [1]
    assert ids("deploy web db") == []
    assert ids("running") == [1]  # the status (1 % 3 is running)
    assert ids("2") == [2]  # the id
    assert ids("deploy", frozenset({"success"})) == [3]  # 3 % 3 is success
    assert view(snapshot, frozenset(), search_words("deploy"))["matching"] == 2
    assert snapshot.search_texts is snapshot.search_texts  # made once for every page


def test_a_search_is_bounded() -> None:
    assert search_words(" ".join(["w"] * MAX_SEARCH_WORDS)) == ["w"] * MAX_SEARCH_WORDS
    assert len(search_words("x" * MAX_SEARCH_LENGTH)) == 1
    with pytest.raises(ValueError, match="more than 10 words"):
        search_words(" ".join(["w"] * (MAX_SEARCH_WORDS + 1)))
    with pytest.raises(ValueError, match="longer than 200 characters"):
        search_words("x" * (MAX_SEARCH_LENGTH + 1))
    with pytest.raises(ValueError, match="longer than 200 characters"):
        search_words("s " * 3900)  # the audit's search of 3,900 words


# -- exposition ------------------------------------------------------------------------
def test_cumulative_buckets() -> None:
    assert cumulative([0.1, 1.0], [2, 0, 3]) == [("0.1", 2.0), ("1.0", 2.0), ("+Inf", 5.0)]
    with pytest.raises(ValueError):
        cumulative([0.1], [1])


def test_render_round_trips_through_prometheus_parser() -> None:
    metrics = Metrics(clock=iter([0.0, 0.002]).__next__)
    metrics.submissions(3, 1)
    with metrics.timed_write("create"):
        pass
    export = metrics.export(QueueState(role="master", jobs={("queued", 0): 2}, workers=2))
    families = {f.name: f for f in text_string_to_metric_families(render(export).decode())}
    assert families["jobqueue_jobs_submitted"].type == "counter"
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for s in families["jobqueue_jobs_submitted"].samples
    }
    assert samples[("jobqueue_jobs_submitted_total", (("outcome", "accepted"),))] == 3
    writes = families["jobqueue_store_write_seconds"]
    assert writes.type == "histogram"
    count = [s for s in writes.samples if s.name.endswith("_count")]
    assert count[0].value == 1
    assert families["jobqueue_master_up"].samples[0].value == 1


def test_render_survives_a_malformed_family() -> None:
    export = {
        "version": 1,
        "families": [{"name": "x", "type": "nonsense", "help": "", "labels": [], "samples": []}],
    }
    text = render(export).decode()
    assert "jobqueue_master_up 1.0" in text and "\nx " not in text


# -- the documents agree with the code --------------------------------------------------
def known_metric_names() -> set[str]:
    export = Metrics().export(QueueState(role="master", jobs={}))
    names = {"jobqueue_master_up"}
    for family in export["families"]:
        name = family["name"]
        if family["type"] == "counter":
            names.add(name + "_total")
        elif family["type"] == "histogram":
            names.update({name + "_bucket", name + "_count", name + "_sum", name})
        else:
            names.add(name)
    return names


def test_alerting_rules_use_only_real_metrics() -> None:
    rules = (DOC / "examples" / "jobqueue-alerts.yml").read_text()
    used = set(re.findall(r"\bjobqueue_[a-z_]+", rules))
    assert used and used <= known_metric_names(), used - known_metric_names()


def test_the_metrics_table_lists_every_metric() -> None:
    text = (DOC / "rapi.rst").read_text()
    listed = set(re.findall(r"``(jobqueue_[a-z_]+)", text))
    exported = {n for n in known_metric_names() if not n.endswith(("_bucket", "_count", "_sum"))}
    assert exported <= listed, exported - listed


def test_the_service_unit_uses_real_options() -> None:
    unit = (DOC / "examples" / "jobqueue-rapi.service").read_text()
    command = " ".join(
        line.strip().rstrip("\\") for line in unit.split("ExecStart=", 1)[1].splitlines()[:4]
    ).split()
    args = build_parser().parse_args(command[1:])
    assert args.port == 5080 and args.users_file and args.ssl_cert and args.ssl_key


def test_dashboard_streams_never_hold_up_a_writers_wait() -> None:
    release = threading.Event()
    started: list[str] = []

    class Blocking:
        def wait_for_job_change(self, who: str) -> str:
            started.append(who)
            release.wait(10)
            return who

        def close(self) -> None:
            pass

    async def scenario() -> list[str]:
        blocking: Any = Blocking()
        master = Master("unused", threads=6, make_client=lambda path, timeout: blocking)
        streams = [
            asyncio.ensure_future(
                master.long_poll(lambda c, n=n: c.wait_for_job_change(f"stream {n}"), watch=True)
            )
            for n in range(5)
        ]
        wait = asyncio.ensure_future(master.long_poll(lambda c: c.wait_for_job_change("wait")))
        deadline = time.monotonic() + 10
        while "wait" not in started and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        seen = list(started)
        release.set()
        await asyncio.gather(wait, *streams)
        master.close()
        return seen

    seen = asyncio.run(scenario())
    assert "wait" in seen  # it ran while the streams' turns were all taken
    assert sum(who.startswith("stream") for who in seen) == 1  # one turn for them of 2
