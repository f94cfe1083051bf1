"""Permissions: who may use which socket, file modes, and what commands run with.

The real daemon runs as root (these tests need root to create a throwaway
user). Clients of that user run in a forked child that drops to it with
``setgroups``/``setgid``/``setuid`` before touching the socket: the same as
``subprocess``'s ``preexec_fn``, without exec'ing an interpreter the user
may not be allowed to read.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.lus.command import base_environment
from jobqueue.luxi.methods import METHODS
from tests import accounts
from tests.accounts import Account, call, run_as, throwaway_account
from tests.daemon_helper import Daemon, wait_until
from tests.luxi_samples import DELAY0, VALID_CALLS
from tests.queue_files import file_bytes, job_paths

outsider = accounts.outsider  # the account and daemon fixtures
open_state_dir = accounts.open_state_dir
make_daemon = accounts.make_daemon

#: Every method that changes something: the query socket must refuse each one.
WRITE_METHODS = [
    "ArchiveJob",
    "AutoArchiveJobs",
    "CancelJob",
    "ChangeJobPriority",
    "ChangeJobStartTime",
    "DeleteFilter",
    "PruneArchive",
    "ReplaceFilter",
    "SetDrainFlag",
    "SetMaxRunningJobs",
    "SetWatcherPause",
    "SubmitJob",
    "SubmitJobToDrainedQueue",
    "SubmitManyJobs",
]


@pytest.fixture(scope="module")
def second_user() -> Iterator[Account]:
    """Another throwaway user, outside another throwaway group (used as the admin group)."""
    with throwaway_account("jqsec") as account:
        yield account


def test_outsider_cannot_use_either_socket(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon()
    master, query = daemon.paths.master_socket, daemon.paths.query_socket
    assert stat.S_IMODE(os.stat(query).st_mode) == 0o660
    as_outsider = (outsider.uid, outsider.gid, [])
    # The file modes stop it: connect() is refused on both sockets.
    for path, method, args in ((master, "SubmitJob", [DELAY0]), (query, "QueryJobs", None)):
        outcome = run_as(*as_outsider, lambda p=path, m=method, a=args: call(p, m, a, ["id"]))
        assert outcome == {"error": "PermissionError", "errno": 13}
    assert job_paths(daemon.state_dir / "queue") == {}


def test_a_public_query_socket_serves_outsiders_reads_and_nothing_else(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon("--query-socket-public")
    query = daemon.paths.query_socket
    assert stat.S_IMODE(os.stat(query).st_mode) == 0o666
    as_outsider = (outsider.uid, outsider.gid, [])
    outcome = run_as(*as_outsider, lambda: call(query, "QueryConfigValues", ["drain_flag"]))
    assert outcome == {"ok": {"success": True, "result": [False]}}
    outcome = run_as(*as_outsider, lambda: call(query, "SubmitJob", [DELAY0]))
    assert outcome["ok"]["success"] is False
    assert outcome["ok"]["result"][0] == "PermissionError"
    assert job_paths(daemon.state_dir / "queue") == {}


def test_query_socket_group_is_configurable(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon("--query-socket-group", outsider.other_group)
    query = daemon.paths.query_socket
    info = os.stat(query)
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, outsider.other_gid)
    member = (outsider.uid, outsider.gid, [outsider.other_gid])
    outcome = run_as(*member, lambda: call(query, "QueryJobs", None, ["id"]))
    assert outcome == {"ok": {"success": True, "result": []}}
    # Reading does not make it a submitter.
    outcome = run_as(*member, lambda: call(query, "SubmitJob", [DELAY0]))
    assert outcome["ok"]["result"][0] == "PermissionError"


def test_daemon_checks_peer_credentials_against_the_socket_group(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon("--socket-group", outsider.other_group)
    master = daemon.paths.master_socket
    info = os.stat(master)
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, outsider.other_gid)
    assert (
        run_as(outsider.uid, outsider.gid, [], lambda: call(master, "QueryJobs", None, ["id"]))[
            "errno"
        ]
        == 13
    )
    # Take the file mode out of the way: the daemon's own check must still refuse.
    os.chmod(master, 0o666)
    for method, args in [("SubmitJob", [[DELAY0]]), ("QueryConfigValues", [["drain_flag"]])]:
        outcome = run_as(
            outsider.uid, outsider.gid, [], lambda m=method, a=args: call(master, m, *a)
        )
        assert outcome["ok"]["success"] is False
        assert outcome["ok"]["result"] == [
            "PermissionError",
            ["Permission denied: not allowed to use the master socket"],
        ]
    assert job_paths(daemon.state_dir / "queue") == {}
    # A member of the group, supplementary or primary, may.
    for gid, groups in [(outsider.gid, [outsider.other_gid]), (outsider.other_gid, [])]:
        outcome = run_as(outsider.uid, gid, groups, lambda: call(master, "SubmitJob", [DELAY0]))
        assert outcome["ok"]["success"] is True, outcome
        assert daemon.wait_job(outcome["ok"]["result"]) == "success"


def test_query_socket_refuses_every_write_method_to_outsiders(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    assert set(METHODS) == set(VALID_CALLS), "a new method needs a sample call"
    assert sorted(name for name, method in METHODS.items() if not method.read_only) == WRITE_METHODS
    daemon = make_daemon("--query-socket-public", workers=1)
    client = daemon.client()
    done = client.submit_job([DELAY0])
    daemon.wait_job(done)
    queue_dir = daemon.state_dir / "queue"
    before = file_bytes(queue_dir)
    query = daemon.paths.query_socket
    as_outsider = (outsider.uid, outsider.gid, [])
    for method, args in VALID_CALLS.items():
        args = [done if arg == 1 else arg for arg in args]
        answer = run_as(*as_outsider, lambda m=method, a=args: call(query, m, *a))["ok"]
        if method in WRITE_METHODS:
            assert answer["success"] is False
            assert answer["result"][0] == "PermissionError"
            assert method in answer["result"][1][0]
        else:
            assert answer["success"] is True, (method, answer)
    assert file_bytes(queue_dir) == before


def test_one_socket_for_everything_for_socket_group_members(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    """Ganeti 2.11+ sends SubmitJob to the query socket: members of the socket group may."""
    daemon = make_daemon("--socket-group", outsider.other_group)
    query = daemon.paths.query_socket
    assert os.stat(query).st_gid == outsider.other_gid  # the query group defaults to it
    member = (outsider.uid, outsider.gid, [outsider.other_gid])
    outcome = run_as(*member, lambda: call(query, "SubmitJob", [DELAY0]))
    assert outcome["ok"]["success"] is True, outcome
    assert daemon.wait_job(outcome["ok"]["result"]) == "success"
    # Root on the query socket too.
    assert call(query, "SetDrainFlag", True) == {"success": True, "result": True}


def test_files_0600_and_directories_0700_even_with_umask_0(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(preexec_fn=lambda: os.umask(0))
    client = daemon.client()
    ids = [row[1] for row in client.submit_many_jobs([[DELAY0], [DELAY0]])]
    for job_id in ids:
        daemon.wait_job(job_id)
    assert client.archive_job(ids[0]) is True
    client.set_drain_flag(True)
    queue_dir = daemon.state_dir / "queue"
    files = [Path(root, name) for root, _, names in os.walk(queue_dir) for name in names]
    dirs = [Path(root, name) for root, names, _ in os.walk(queue_dir) for name in names]
    assert {path.name for path in files} >= {"serial", "version", "lock", "drain", f"job-{ids[1]}"}
    assert any(path.parent.parent.name == "archive" for path in files)
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        str(p): "0o600" for p in files
    }
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in [queue_dir, *dirs]} == {
        str(p): "0o700" for p in [queue_dir, *dirs]
    }
    # Outside the queue nothing is writable by others either.
    others_write = stat.S_IWGRP | stat.S_IWOTH
    for path in (daemon.paths.pid_file, daemon.paths.run_dir, daemon.paths.root):
        assert not os.stat(path).st_mode & others_write, path
    assert stat.S_IMODE(os.stat(daemon.paths.master_socket).st_mode) == 0o660


def test_commands_run_as_the_daemon_user_with_exactly_the_asked_environment(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(env={"SECRET_TOKEN": "must-not-leak", "PYTHONPATH": "/nowhere"})
    client = daemon.client()
    asked = {"FOO": "bar", "LANG": "en_US.UTF-8", "EMPTY": ""}
    ops = [
        {"OP_ID": "OP_COMMAND_RUN", "argv": ["env"], "env": asked},
        {"OP_ID": "OP_COMMAND_RUN", "argv": ["id", "-u"]},
        {"OP_ID": "OP_COMMAND_RUN", "argv": ["id", "-g"]},
        {"OP_ID": "OP_COMMAND_RUN", "argv": ["ls", "/proc/self/fd"]},
    ]
    job_id = client.submit_job(ops)
    assert daemon.wait_job(job_id) == "success"
    ((logs,),) = client.query_jobs([job_id], ["oplog"])
    stdout = [[entry[3] for entry in op_log if entry[2] == "stdout"] for op_log in logs]
    environment = dict(line.split("=", 1) for line in stdout[0])
    assert environment == base_environment(job_id) | asked
    assert environment["HOME"] == pwd.getpwuid(os.geteuid()).pw_dir
    assert daemon.proc is not None
    daemon_status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    uid_line = next(line for line in daemon_status.splitlines() if line.startswith("Uid:"))
    gid_line = next(line for line in daemon_status.splitlines() if line.startswith("Gid:"))
    assert stdout[1] == [uid_line.split()[2]] and stdout[2] == [gid_line.split()[2]]
    # Only stdin, stdout, stderr (and ls's own directory handle): nothing of the daemon's.
    assert set(stdout[3]) <= {"0", "1", "2", "3"}, stdout[3]


# -- who may do what -----------------------------------------------------------------------
def _submit_and_pid(path: str, ops: list[Any]) -> list[Any]:
    """SubmitJob's answer and the pid of the process that sent it."""
    return [call(path, "SubmitJob", ops), os.getpid()]


def test_every_job_records_its_submitter(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon("--socket-group", outsider.other_group)
    master = daemon.paths.master_socket
    child = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
    parent = {"OP_ID": "OP_TEST_DUMMY", "submit_jobs": [[child]]}
    member = (outsider.uid, outsider.gid, [outsider.other_gid])
    answer, pid = run_as(*member, lambda: _submit_and_pid(master, [parent]))["ok"]
    job_id = answer["result"]
    assert daemon.wait_job(job_id) == "success"
    client = daemon.client()
    ((result, submitter),) = client.query_jobs([job_id], ["opresult", "submitter"])
    identity = {"uid": outsider.uid, "gid": outsider.gid, "groups": [outsider.other_gid]}
    assert submitter == {"by": "client", **identity, "pid": pid}
    ((_, child_id),) = result[0]["jobs"]
    daemon.wait_job(child_id)
    (child_row,) = client.query("job", ["submitter"], ["=", "id", child_id])["data"]
    assert child_row == [[0, {"by": "job", **identity, "pid": pid, "job": job_id}]]
    # Root's own job, and what jobctl info says.
    own = client.submit_job([DELAY0])
    ((mine,),) = client.query_jobs([own], ["submitter"])
    assert (mine["by"], mine["uid"], mine["pid"]) == ("client", 0, os.getpid())
    jobctl = [sys.executable, "-m", "jobqueue.cli.main", "--state-dir", str(daemon.state_dir)]
    info = subprocess.run(
        [*jobctl, "info", str(child_id)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    expected = f"Submitted by: job {job_id}, for uid {outsider.uid} ({outsider.name}), gid"
    assert expected in info, info


def test_only_the_submitter_root_and_admins_change_a_job(
    outsider: Account, second_user: Account, make_daemon: Callable[..., Daemon]
) -> None:
    sock_group, admin_group = outsider.other_group, second_user.other_group
    daemon = make_daemon("--socket-group", sock_group, "--admin-group", admin_group, workers=1)
    master = daemon.paths.master_socket
    owner = (outsider.uid, outsider.gid, [outsider.other_gid])
    other = (second_user.uid, second_user.gid, [outsider.other_gid])
    admin = (second_user.uid, second_user.gid, [outsider.other_gid, second_user.other_gid])

    def as_user(user: tuple[int, int, list[int]], method: str, *args: Any) -> Any:
        return run_as(*user, lambda: call(master, method, *args))["ok"]

    long_delay = {"OP_ID": "OP_TEST_DELAY", "duration": 60}
    running = as_user(owner, "SubmitJob", [long_delay])["result"]
    queued = as_user(owner, "SubmitJob", [DELAY0])["result"]
    client = daemon.client()
    wait_until(lambda: client.query_jobs([running], ["status"]) == [["running"]], 15)
    for method, args in [
        ("CancelJob", [queued]),
        ("CancelJob", [running, True]),
        ("ChangeJobPriority", [queued, -10]),
        ("ChangeJobStartTime", [queued, 4_000_000_000]),
    ]:
        answer = as_user(other, method, *args)
        assert answer["success"] is False, (method, answer)
        assert answer["result"][0] == "PermissionError"
        assert "only the job's submitter, root and the admin group" in answer["result"][1][0]
    assert client.query_jobs([running, queued], ["status"]) == [["running"], ["queued"]]
    for method, args in [
        ("SetDrainFlag", [True]),
        ("AutoArchiveJobs", [0, 10]),
        ("PruneArchive", [0, 10]),
        ("SubmitJobToDrainedQueue", [[DELAY0]]),
        ("ReplaceFilter", [None, 0, [], "PAUSE", []]),
        ("DeleteFilter", ["no-such-rule"]),
        ("SetMaxRunningJobs", [4]),
    ]:
        answer = as_user(owner, method, *args)
        assert answer["result"][0] == "PermissionError", (method, answer)
    assert client.call("Query", "filter", ["uuid"], None)["data"] == []
    # The owner may; an admin may; root may.
    assert as_user(owner, "ChangeJobPriority", queued, 10)["success"] is True
    assert as_user(admin, "CancelJob", queued)["result"][0] is True
    assert as_user(owner, "CancelJob", running, True)["result"][0] is True
    assert daemon.wait_job(running) == "canceled"
    answer = as_user(other, "ArchiveJob", running)
    assert answer["result"][0] == "PermissionError"
    assert as_user(owner, "ArchiveJob", running) == {"success": True, "result": True}
    assert as_user(admin, "SetDrainFlag", True) == {"success": True, "result": True}
    assert as_user(admin, "SetMaxRunningJobs", 2) == {"success": True, "result": True}
    assert client.archive_job(queued) is True


def _command_output(daemon: Daemon, job_id: int) -> list[list[str]]:
    """The stdout lines of each opcode of a finished job."""
    ((logs,),) = daemon.client().query_jobs([job_id], ["oplog"])
    return [[entry[3] for entry in op_log if entry[2] == "stdout"] for op_log in logs]


ID_OPS = [
    {"OP_ID": "OP_COMMAND_RUN", "argv": ["id", "-u"]},
    {"OP_ID": "OP_COMMAND_RUN", "argv": ["id", "-g"]},
    {"OP_ID": "OP_COMMAND_RUN", "argv": ["id", "-G"]},
    {"OP_ID": "OP_COMMAND_RUN", "argv": ["sh", "-c", 'echo "$HOME $USER $LOGNAME"']},
]


@pytest.mark.parametrize("run_as", ["submitter", "daemon"])
def test_commands_run_as_their_submitter_under_a_root_daemon(
    outsider: Account, make_daemon: Callable[..., Daemon], run_as: str
) -> None:
    daemon = make_daemon("--socket-group", outsider.other_group, "--commands-run-as", run_as)
    master = daemon.paths.master_socket
    member = (outsider.uid, outsider.gid, [outsider.other_gid])
    job_id = run_as_user_submit(member, master, ID_OPS)
    assert daemon.wait_job(job_id) == "success"
    uid, gid, groups, names = _command_output(daemon, job_id)
    home = pwd.getpwnam(outsider.name).pw_dir
    if run_as == "submitter":
        assert (uid, gid) == ([str(outsider.uid)], [str(outsider.gid)])
        assert sorted(groups[0].split()) == sorted({str(outsider.gid), str(outsider.other_gid)})
        assert names == [f"{home} {outsider.name} {outsider.name}"]
    else:  # Ganeti's model, asked for explicitly: root
        assert (uid, gid) == (["0"], ["0"])
        assert names == [f"{pwd.getpwuid(0).pw_dir} root root"]
    # A fan-out's item jobs run as the fan-out's submitter too.
    fanout = {"OP_ID": "OP_COMMAND_FANOUT", "argv": ["id", "-u"], "items": ["a"]}
    parent = run_as_user_submit(member, master, [fanout])
    assert daemon.wait_job(parent) == "success"
    ((result,),) = daemon.client().query_jobs([parent], ["opresult"])
    ((_, child),) = result[0]["jobs"]
    assert daemon.wait_job(child) == "success"
    expected = str(outsider.uid) if run_as == "submitter" else "0"
    assert _command_output(daemon, child) == [[expected]]


def test_only_root_names_another_user_for_a_command(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon("--socket-group", outsider.other_group)
    master = daemon.paths.master_socket
    member = (outsider.uid, outsider.gid, [outsider.other_gid])
    as_root = {"OP_ID": "OP_COMMAND_RUN", "argv": ["id", "-u"], "user": "root"}
    job_id = run_as_user_submit(member, master, [as_root])
    assert daemon.wait_job(job_id) == "error"
    ((result,),) = daemon.client().query_jobs([job_id], ["opresult"])
    assert result[0][0] == "PermissionError", result
    assert _command_output(daemon, job_id) == [[]]
    # Root may name a user.
    as_outsider = {"OP_ID": "OP_COMMAND_RUN", "argv": ["id", "-u"], "user": outsider.name}
    job_id = daemon.client().submit_job([as_outsider])
    assert daemon.wait_job(job_id) == "success"
    assert _command_output(daemon, job_id) == [[str(outsider.uid)]]


def run_as_user_submit(user: tuple[int, int, list[int]], path: str, ops: list[Any]) -> int:
    answer = run_as(*user, lambda: call(path, "SubmitJob", ops))["ok"]
    assert answer["success"] is True, answer
    return int(answer["result"])
