"""jobqueue-rapi end to end: a real master, a real jobqueue-rapi over HTTPS, and a client
written from the documented shapes (tests/rapi_client.py)."""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helper import Daemon, state_dir_under, wait_until
from tests.rapi_client import RapiClient, RapiFailure
from tests.rapi_helper import USERS, Rapi, write_users

pytest.importorskip("aiohttp")
pytest.importorskip("cryptography")

JOB_FIELDS_BULK = {
    "id",
    "ops",
    "status",
    "summary",
    "opstatus",
    "received_ts",
    "start_ts",
    "end_ts",
}
JOB_FIELDS = JOB_FIELDS_BULK | {"oplog", "opresult"}
ERROR_KEYS = {"code", "message", "explain"}
DELAY0 = {"OP_ID": "OP_TEST_DELAY", "duration": 0}


class Setup:
    def __init__(self, master: Daemon, rapi: Rapi) -> None:
        self.master = master
        self.rapi = rapi

    def client(self, user: str | None = "writer", password: str | None = None) -> RapiClient:
        if user is not None and password is None:
            password = USERS[user][1]
        return RapiClient(self.rapi.url, str(self.rapi.cert), user, password)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("rapi")
    master = Daemon(state_dir_under(work), workers=4).start()
    rapi = Rapi(work, master.paths.master_socket, "--wait-timeout", "2").start()
    yield Setup(master, rapi)
    assert rapi.stop() == 0, rapi.log()
    master.stop()


def failure(call: Any) -> RapiFailure:
    with pytest.raises(RapiFailure) as caught:
        call()
    assert set(caught.value.body) == ERROR_KEYS, caught.value.body
    assert caught.value.body["code"] == caught.value.status
    return caught.value


def wait_status(client: RapiClient, job_id: int, statuses: set[str]) -> str:
    return str(
        wait_until(
            lambda: client.job(job_id)["status"] in statuses and client.job(job_id)["status"],
            what=f"job {job_id} to become one of {sorted(statuses)}",
        )
    )


# -- authentication and rights --------------------------------------------------------
def test_every_user_form_logs_in(setup: Setup) -> None:
    for user in USERS:  # clear text, {cleartext} and {ha1} passwords
        assert setup.client(user).version() == 2


def test_no_user_is_asked_to_authenticate(setup: Setup) -> None:
    refused = failure(setup.client(None).version)
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="Ganeti Remote API"'


def test_wrong_password_and_unknown_user_are_refused(setup: Setup) -> None:
    assert failure(setup.client("writer", "nope").version).status == 401
    assert failure(setup.client("mallory", "w-secret").version).status == 401
    garbled = setup.client(None)
    headers = {"Authorization": "Basic !!!not-base64"}
    assert failure(lambda: garbled.request("GET", "/version", headers=headers)).status == 401
    digest = {"Authorization": "Digest username=writer"}
    assert failure(lambda: garbled.request("GET", "/version", headers=digest)).status == 401


def test_a_read_user_reads_but_cannot_write(setup: Setup) -> None:
    reader, writer = setup.client("reader"), setup.client("writer")
    job_id = writer.submit([DELAY0])
    assert reader.job(job_id)["id"] == job_id
    assert failure(lambda: reader.submit([DELAY0])).status == 403
    assert failure(lambda: reader.cancel(job_id)).status == 403
    assert failure(lambda: reader.set_priority(job_id, 10)).status == 403
    assert failure(lambda: reader.wait(job_id, ["status"])).status == 403  # as Ganeti's
    assert failure(lambda: reader.add_filter(action="PAUSE")).status == 403


def test_cross_site_changes_are_refused(setup: Setup) -> None:
    writer = setup.client("writer")
    job_id = writer.submit([DELAY0])
    evil = {"Origin": "https://evil.example"}
    assert (
        failure(lambda: writer.request("DELETE", f"/2/jobs/{job_id}", headers=evil)).status == 403
    )
    fetch = {"Sec-Fetch-Site": "cross-site"}
    assert (
        failure(lambda: writer.request("DELETE", f"/2/jobs/{job_id}", headers=fetch)).status == 403
    )
    same = {"Origin": setup.rapi.url, "Sec-Fetch-Site": "same-origin"}
    assert writer.request("DELETE", f"/2/jobs/{job_id}", headers=same)[1]  # reached the master


def test_the_users_file_is_read_again_when_it_changes(setup: Setup) -> None:
    newcomer = setup.client("newcomer", "n-secret")
    assert failure(newcomer.version).status == 401
    users = dict(USERS, newcomer=("n-secret", "n-secret", "read"))
    write_users(setup.rapi.users_file, users)
    wait_until(lambda: _answers(newcomer), what="the new user to be let in")
    write_users(setup.rapi.users_file)  # and out again
    wait_until(lambda: not _answers(newcomer), what="the removed user to be refused")


def _answers(client: RapiClient) -> bool:
    try:
        return bool(client.version() == 2)
    except RapiFailure as err:
        assert err.status == 401
        return False


def test_plain_http_gets_no_answer_from_the_tls_port(setup: Setup) -> None:
    import urllib.error
    import urllib.request

    plain = setup.rapi.url.replace("https://", "http://") + "/version"
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(plain, timeout=10).read()


# -- jobs -------------------------------------------------------------------------------
def test_submit_list_and_read_jobs(setup: Setup) -> None:
    writer = setup.client("writer")
    job_id = writer.submit([DELAY0, {"OP_ID": "OP_TEST_DELAY", "duration": 0, "repeat": 2}])
    assert isinstance(job_id, int)
    assert {"id": job_id, "uri": f"/2/jobs/{job_id}"} in writer.jobs()
    assert wait_status(writer, job_id, {"success"}) == "success"
    job = writer.job(job_id)
    assert set(job) == JOB_FIELDS
    assert job["opstatus"] == ["success", "success"]
    assert [entry[3] for entry in job["oplog"][1]] == [
        "Test delay iteration 1/2",
        "Test delay iteration 2/2",
    ]
    (bulk,) = [row for row in writer.jobs(bulk=True) if row["id"] == job_id]
    assert set(bulk) == JOB_FIELDS_BULK
    assert bulk["summary"] == ["TEST_DELAY(0)", "TEST_DELAY(0)"]
    ids = [row["id"] for row in writer.jobs()]
    assert ids == sorted(ids)


def test_the_reason_trail_names_the_user(setup: Setup) -> None:
    writer = setup.client("writer")
    mine = ["me", "my own reason", 1]
    job_id = writer.request(
        "POST", "/2/jobs?reason=deploy%20web", {"ops": [{**DELAY0, "reason": [mine]}]}
    )
    trail = writer.job(job_id)["ops"][0]["reason"]
    assert trail[0] == mine
    assert trail[1][:2] == ["gnt:user", "deploy web"]
    assert trail[2][:2] == ["gnt:library:rlib2:jobs", "jobqueue-rapi user writer"]
    assert trail[3][0] == "gnt:daemon:jobqueue-masterd"  # the master's own entry comes last
    assert "POST /2/jobs?reason=deploy%20web by user writer" in setup.rapi.log()


def test_a_dry_run_job_runs_no_opcode(setup: Setup) -> None:
    writer = setup.client("writer")
    job_id = writer.submit([{"OP_ID": "OP_COMMAND_RUN", "argv": ["false"]}], dry_run=True)
    assert wait_status(writer, job_id, {"success", "error"}) == "success"
    assert writer.job(job_id)["ops"][0]["dry_run"] is True


def test_bad_requests_are_answered_as_ganeti_does(setup: Setup) -> None:
    writer = setup.client("writer")
    assert failure(lambda: writer.job(999999)).status == 404
    assert failure(lambda: writer.request("GET", "/2/nothing")).status == 404
    unsupported = failure(lambda: writer.request("PATCH", "/2/jobs"))
    assert unsupported.status == 501
    assert unsupported.body["message"] == "Method PATCH is unsupported for path /2/jobs"
    text = {"Content-Type": "text/plain"}
    assert (
        failure(lambda: writer.request("POST", "/2/jobs", raw_body=b"{}", headers=text)).status
        == 415
    )
    broken = {"Content-Type": "application/json"}
    not_json = failure(lambda: writer.request("POST", "/2/jobs", raw_body=b"{", headers=broken))
    assert not_json.status == 400 and not_json.body["message"] == "Unable to parse JSON data"
    assert failure(lambda: writer.request("POST", "/2/jobs", ["ops"])).status == 400
    assert failure(lambda: writer.request("POST", "/2/jobs", {"opz": []})).status == 400
    assert failure(lambda: writer.submit([])).status == 400
    unknown = failure(lambda: writer.submit([{"OP_ID": "OP_NO_SUCH_THING"}]))
    assert unknown.status == 400 and "OP_NO_SUCH_THING" in unknown.body["message"]
    assert failure(lambda: writer.submit([{"OP_ID": "OP_TEST_DELAY"}])).status == 400
    assert failure(lambda: writer.request("GET", "/2/jobs?bulk=yes")).status == 400


def _tracebacks(rapi: Rapi) -> int:
    return rapi.log().count("Traceback")


def test_bodies_that_are_not_plain_json_are_400(setup: Setup) -> None:
    writer, logged = setup.client("writer"), _tracebacks(setup.rapi)

    def post(path: str, raw: str) -> RapiFailure:
        json_type = {"Content-Type": "application/json"}
        return failure(
            lambda: writer.request("POST", path, raw_body=raw.encode(), headers=json_type)
        )

    for number in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
        refused = post(
            "/2/jobs", '{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": ' + number + "}]}"
        )
        assert refused.status == 400, (number, refused.body)  # was 502: the master never saw it
        assert refused.body["message"].startswith("Unable to parse JSON data: "), refused.body
    nan_filter = post("/2/filters", '{"predicates": [["jobid", [">", "id", NaN]]]}')
    assert nan_filter.status == 400, nan_filter.body
    for depth in (900, 5000):  # deeper than the master reads; deeper than Python parses
        nested = "[" * depth + "]" * depth
        for name, path in (("ops", "/2/jobs"), ("predicates", "/2/filters")):
            refused = post(path, '{"' + name + '": ' + nested + "}")
            assert refused.status == 400, (path, depth, refused.body)
            assert "nested deeper than" in refused.body["message"]
    # Deep, but within the body's bound: the master's own check answers, with its message.
    deep_result = {"OP_ID": "OP_TEST_DUMMY", "result": json.loads("[" * 100 + "]" * 100)}
    refused = failure(lambda: writer.submit([deep_result]))
    assert refused.status == 400 and "64 levels" in refused.body["message"], refused.body
    assert _tracebacks(setup.rapi) == logged, setup.rapi.log()


@pytest.mark.parametrize("job_id", ["9" * 5000, str(10**30)], ids=["5000 digits", "10**30"])
def test_a_job_id_too_long_for_any_job_is_an_unknown_job(setup: Setup, job_id: str) -> None:
    # 5,000 digits are more than Python converts to an integer: answered without asking
    # the master, as the master answers for 10**30.
    writer, logged = setup.client("writer"), _tracebacks(setup.rapi)
    waiting = {"fields": ["status"], "previous_job_info": None, "previous_log_serial": None}
    for method, path, body in (
        ("GET", f"/2/jobs/{job_id}", None),
        ("GET", f"/2/jobs/{job_id}/wait", waiting),
        ("GET", f"/dashboard/jobs/{job_id}/events", None),
    ):
        unknown = failure(functools.partial(writer.request, method, path, body))
        assert unknown.status == 404, (path, unknown.body)
        assert unknown.body["message"] == f"Job {job_id} not found"
    assert writer.request("DELETE", f"/2/jobs/{job_id}") == [False, f"Job {job_id} not found"]
    changed = writer.request("PUT", f"/2/jobs/{job_id}/priority", {"priority": 10})
    assert changed == [False, f"Job {job_id} not found"]
    assert _tracebacks(setup.rapi) == logged, setup.rapi.log()


def test_leading_zeros_of_a_job_id_do_not_count(setup: Setup) -> None:
    writer = setup.client("writer")
    job_id = writer.submit([DELAY0])
    assert writer.request("GET", f"/2/jobs/{'0' * 30}{job_id}")["id"] == job_id


def test_the_dashboards_search_is_bounded_and_matches_every_word(setup: Setup) -> None:
    reader = setup.client("reader")
    job_id = setup.client("writer").submit([DELAY0])
    found = reader.overview(f"{job_id} TeSt_DeLaY(0)")
    assert [row["id"] for row in found["jobs"]] == [job_id] and found["matching"] == 1
    ten = " ".join([str(job_id)] * 9 + ["test_delay"])  # ten words, every one in the job
    assert [row["id"] for row in reader.overview(ten)["jobs"]] == [job_id]
    assert reader.overview(f"{job_id} no-such-word")["matching"] == 0
    assert job_id in [row["id"] for row in reader.overview("")["jobs"]]  # no search: every job
    too_many = failure(lambda: reader.overview(" ".join(["s"] * 11)))
    assert too_many.status == 400
    assert too_many.body["message"] == "The 'search' parameter has more than 10 words"
    too_long = failure(lambda: reader.overview("s" * 201))
    assert too_long.status == 400
    assert too_long.body["message"] == "The 'search' parameter is longer than 200 characters"
    assert failure(lambda: reader.overview("s " * 3900)).status == 400  # the audit's search


def test_a_drained_queue_answers_503(setup: Setup) -> None:
    writer = setup.client("writer")
    luxi = setup.master.client()
    luxi.set_drain_flag(True)
    try:
        drained = failure(lambda: writer.submit([DELAY0]))
        assert drained.status == 503
        assert drained.body["message"] == "Job queue is drained, cannot submit"
    finally:
        luxi.set_drain_flag(False)


def test_cancel_kill_and_priority(setup: Setup, tmp_path: Path) -> None:
    writer = setup.client("writer")
    holder = writer.submit([_run_until(tmp_path / "go", locks=["host:cancel"])])
    waiter = writer.submit(
        [{"OP_ID": "OP_COMMAND_RUN", "argv": ["true"], "locks": ["host:cancel"]}]
    )
    assert wait_status(writer, holder, {"running"}) == "running"
    assert wait_status(writer, waiter, {"waiting"}) == "waiting"
    changed = writer.set_priority(waiter, -10)
    assert changed[0] is True
    assert "changed to -10" in changed[1]
    assert writer.cancel(waiter)[0] is True
    assert wait_status(writer, waiter, {"canceled"}) == "canceled"
    refused = writer.cancel(holder)
    assert refused == [False, f"Job {holder} is running; cancel it with kill to stop it"]
    assert writer.cancel(holder, kill=True) == [True, f"Job {holder} will be killed"]
    assert wait_status(writer, holder, {"canceled"}) == "canceled"
    assert writer.cancel(999999) == [False, "Job 999999 not found"]


def _run_until(flag: Path, *, locks: list[str] | None = None) -> dict[str, Any]:
    """A command that logs "first", waits for ``flag`` to exist, then logs "second"."""
    script = f'echo first; while [ ! -e "{flag}" ]; do sleep 0.02; done; echo second'
    return {"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", script], "locks": locks or []}


def test_wait_long_polls_for_the_next_change(setup: Setup, tmp_path: Path) -> None:
    writer = setup.client("writer")
    flag = tmp_path / "go"
    job_id = writer.submit([_run_until(flag)])
    wait_until(lambda: _logged(writer, job_id, "first"), what="the first line")
    job = writer.job(job_id)
    serial = max(entry[0] for entries in job["oplog"] for entry in entries)
    answers: list[Any] = []
    waiting = threading.Thread(
        target=lambda: answers.append(writer.wait(job_id, ["status"], [job["status"]], serial))
    )
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive(), "nothing changed yet: the call must still be waiting"
    flag.touch()  # the job logs "second": the waiting call returns with it
    waiting.join(30)
    assert not waiting.is_alive()
    (answer,) = answers
    assert [entry[3] for entry in answer["log_entries"]] == ["second"]
    assert answer["log_entries"][0][0] > serial
    assert answer["job_info"][0] in ("running", "success")


def _logged(client: RapiClient, job_id: int, line: str) -> bool:
    return any(entry[3] == line for entries in client.job(job_id)["oplog"] for entry in entries)


def test_wait_answers_null_when_nothing_changes_and_404_for_no_job(setup: Setup) -> None:
    writer = setup.client("writer")
    job_id = writer.submit([DELAY0])
    assert wait_status(writer, job_id, {"success"}) == "success"
    # A finished job answers at once (as Ganeti's server does); a live one that does
    # not change answers null after the wait timeout (2 s in this module).
    finished = writer.wait(job_id, ["status"], ["success"], 10**6)
    assert finished == {"job_info": ["success"], "log_entries": []}
    blocker = writer.submit([{"OP_ID": "OP_TEST_DELAY", "duration": 30}])
    assert wait_status(writer, blocker, {"running"}) == "running"
    started = time.monotonic()
    assert writer.wait(blocker, ["status"], ["running"], 10**6) is None
    assert time.monotonic() - started >= 1.5  # it did wait before answering
    writer.cancel(blocker, kill=True)
    assert failure(lambda: writer.wait(999999, ["status"])).status == 404
    assert failure(lambda: writer.wait(blocker, "status")).status == 400  # type: ignore[arg-type]


# -- metrics --------------------------------------------------------------------------
def test_metrics_are_prometheus_text(setup: Setup) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    content_type, text = setup.client("reader").text("/metrics")
    assert content_type.startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"jobqueue_master_up", "jobqueue_jobs", "jobqueue_jobs_submitted"} <= names


def test_basic_auth_header_is_plain_base64(setup: Setup) -> None:
    # The documented header, built by hand: "Basic " + base64("user:password").
    token = base64.b64encode(b"reader:r-secret").decode()
    anonymous = setup.client(None)
    assert anonymous.request("GET", "/version", headers={"Authorization": f"Basic {token}"}) == 2


# -- filters ----------------------------------------------------------------------------
PAUSE_DELAYS = {
    "priority": 5,
    "predicates": [["opcode", ["==", "OP_ID", "OP_TEST_DELAY"]]],
    "action": "PAUSE",
    "reason": [["rapi-test", "pause the delays", 1]],
}


def held_by(client: RapiClient, uuid: str) -> dict[str, float]:
    """``jobqueue_jobs_held`` by reason for filter rule ``uuid``, and the rule count, scraped."""
    from prometheus_client.parser import text_string_to_metric_families

    _, text = client.text("/metrics")
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "jobqueue_jobs_held" and sample.labels.get("filter") == uuid:
                found[sample.labels["reason"]] = sample.value
            if sample.name == "jobqueue_filter_rules":
                found["rules"] = sample.value
    return found


def test_a_filter_round_trip(setup: Setup) -> None:
    writer, reader = setup.client("writer"), setup.client("reader")
    uuid = writer.add_filter(**PAUSE_DELAYS)
    try:
        assert isinstance(uuid, str)
        assert {"id": uuid, "uri": f"/2/filters/{uuid}"} in reader.filters()
        rule = reader.filter(uuid)
        assert set(rule) == {
            "uuid",
            "watermark",
            "priority",
            "predicates",
            "action",
            "reason_trail",
        }
        assert rule["uuid"] == uuid and rule["priority"] == 5 and rule["action"] == "PAUSE"
        assert rule["predicates"] == PAUSE_DELAYS["predicates"]
        assert rule["reason_trail"][0] == ["rapi-test", "pause the delays", 1]
        assert isinstance(rule["watermark"], int)
        assert rule in reader.filters(bulk=True)

        held = writer.submit([DELAY0])  # the rule holds it back
        other = writer.submit([{"OP_ID": "OP_TEST_DUMMY", "result": 1}])
        assert wait_status(writer, other, {"success"}) == "success"
        assert writer.job(held)["status"] == "queued"
        wait_until(lambda: held_by(reader, uuid) == {"paused": 1.0, "rules": 1.0}, 15)

        replaced = writer.replace_filter(uuid, **{**PAUSE_DELAYS, "action": "ACCEPT"})
        assert replaced == uuid and reader.filter(uuid)["action"] == "ACCEPT"
        assert wait_status(writer, held, {"success"}) == "success"  # let go at once
    finally:
        assert writer.delete_filter(uuid) is None
    assert failure(lambda: reader.filter(uuid)).status == 404
    assert failure(lambda: writer.delete_filter(uuid)).status == 404
    assert uuid not in [rule["id"] for rule in reader.filters()]


def test_filters_are_checked(setup: Setup) -> None:
    writer = setup.client("writer")
    assert failure(lambda: writer.add_filter(action="BOGUS")).status == 400
    assert failure(lambda: writer.add_filter(priority="high")).status == 400
    assert failure(lambda: writer.add_filter(predicates="all")).status == 400
    assert failure(lambda: writer.add_filter(colour="red")).status == 400
    assert failure(lambda: writer.add_filter(predicates=[["nonsense", 1]])).status == 400
    chosen = "11111111-2222-4333-8444-555555555555"
    body = {"uuid": "something-else", "action": "CONTINUE"}
    mismatch = failure(lambda: writer.request("PUT", f"/2/filters/{chosen}", body))
    assert mismatch.status == 400
    assert writer.replace_filter(chosen, action="CONTINUE") == chosen  # created under its uuid
    assert writer.filter(chosen)["action"] == "CONTINUE"
    assert writer.delete_filter(chosen) is None
