"""Permissions: who may use which socket, file modes, and what commands run with.

The real daemon runs as root (these tests need root to create a throwaway
user). Clients of that user run in a forked child that drops to it with
``setgroups``/``setgid``/``setuid`` before touching the socket: the same as
``subprocess``'s ``preexec_fn``, without exec'ing an interpreter the user
may not be allowed to read.
"""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue import errors
from jobqueue.lus.command import base_environment
from jobqueue.luxi.methods import METHODS
from tests.daemon_helper import Daemon, read_response, request
from tests.luxi_samples import DELAY0, VALID_CALLS
from tests.queue_files import file_bytes, job_paths

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


@dataclasses.dataclass(frozen=True)
class Account:
    """A throwaway user and a group it is not in."""

    name: str
    uid: int
    gid: int
    other_group: str
    other_gid: int


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def outsider() -> Iterator[Account]:
    """A user created for these tests (removed after), outside a group also created."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a throwaway user and switches to it with setuid")
    if not (shutil.which("useradd") and shutil.which("groupadd")):
        pytest.skip("useradd/groupadd are not installed, so no throwaway user can be created")
    suffix = secrets.token_hex(3)
    user, group = f"jqtest-{suffix}", f"jqsock-{suffix}"
    made = _run("groupadd", group)
    if made.returncode != 0:
        pytest.skip(f"groupadd failed: {made.stderr.strip()}")
    made = _run("useradd", "--no-create-home", "--no-user-group", "-s", "/bin/false", user)
    if made.returncode != 0:
        _run("groupdel", group)
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    try:
        entry = pwd.getpwnam(user)
        yield Account(user, entry.pw_uid, entry.pw_gid, group, grp.getgrnam(group).gr_gid)
    finally:
        _run("userdel", user)
        _run("groupdel", group)


def run_as(uid: int, gid: int, groups: list[int], action: Callable[[], Any]) -> dict[str, Any]:
    """Run ``action`` in a child with these credentials.

    Returns ``{"ok": result}``, or ``{"error": class name, "errno": errno}``.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, act, report, leave at once
        try:
            os.close(read_fd)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            outcome: dict[str, Any] = {"ok": action()}
        except BaseException as err:
            outcome = {"error": type(err).__name__, "errno": getattr(err, "errno", None)}
        os.write(write_fd, json.dumps(outcome).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and data, f"the child failed (status {status})"
    result: dict[str, Any] = json.loads(data)
    return result


def call(path: str, method: str, *args: Any) -> Any:
    """One raw LUXI call on a new connection; the decoded response."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(request(method, *args))
        return read_response(sock)


@pytest.fixture
def open_state_dir() -> Iterator[Path]:
    """A state directory other users can reach (``tmp_path`` lies under a 0700 directory)."""
    parent = Path(tempfile.mkdtemp(prefix="jqperm"))
    parent.chmod(0o755)
    yield parent / "s"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def make_daemon(open_state_dir: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(*args: str, **options: Any) -> Daemon:
        daemon = Daemon(open_state_dir, *args, **options)
        made.append(daemon)
        return daemon.start()

    yield make
    for daemon in made:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill9()


def test_outsider_cannot_use_the_master_socket(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon()
    master, query = daemon.paths.master_socket, daemon.paths.query_socket
    as_outsider = (outsider.uid, outsider.gid, [])
    # The file mode stops it: connect() is refused.
    outcome = run_as(*as_outsider, lambda: call(master, "SubmitJob", [DELAY0]))
    assert outcome == {"error": "PermissionError", "errno": 13}
    # The query socket serves it reads, and nothing else.
    outcome = run_as(*as_outsider, lambda: call(query, "QueryConfigValues", ["drain_flag"]))
    assert outcome == {"ok": {"success": True, "result": [False]}}
    outcome = run_as(*as_outsider, lambda: call(query, "SubmitJob", [DELAY0]))
    assert outcome["ok"]["success"] is False
    assert outcome["ok"]["result"][0] == "PermissionError"
    assert job_paths(daemon.state_dir / "queue") == {}


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


def test_query_socket_refuses_every_write_method(make_daemon: Callable[..., Daemon]) -> None:
    assert set(METHODS) == set(VALID_CALLS), "a new method needs a sample call"
    assert sorted(name for name, method in METHODS.items() if not method.read_only) == WRITE_METHODS
    daemon = make_daemon(workers=1)
    client = daemon.client()
    done = client.submit_job([DELAY0])
    daemon.wait_job(done)
    queue_dir = daemon.state_dir / "queue"
    before = file_bytes(queue_dir)
    query = daemon.paths.query_socket
    for method, args in VALID_CALLS.items():
        args = [done if arg == 1 else arg for arg in args]
        answer = call(query, method, *args)
        if method in WRITE_METHODS:
            assert answer == {
                "success": False,
                "result": [
                    "PermissionError",
                    [f"{method} is not allowed on the query socket; use the master socket"],
                ],
            }
        else:
            assert answer["success"] is True, (method, answer)
    assert file_bytes(queue_dir) == before
    with pytest.raises(errors.AccessDenied):
        daemon.client(query).set_drain_flag(True)


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
