"""Throwaway user accounts and acting as them, for the permission tests
(``test_permissions``, ``test_cli_permissions``; they need root): ``Account`` and
``throwaway_account`` (a user created for the tests and removed after, outside a
group also created), the module-scoped ``outsider`` fixture, ``run_as`` (run an
action in a forked child that drops to given credentials with
``setgroups``/``setgid``/``setuid``), ``call`` (one raw LUXI call), and the
``open_state_dir`` and ``make_daemon`` fixtures for a real daemon whose state
directory other users can reach.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helper import Daemon, daemons_made, read_response, request


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


@contextlib.contextmanager
def throwaway_account(prefix: str) -> Iterator[Account]:
    """A user created for these tests (removed after), outside a group also created."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a throwaway user and switches to it with setuid")
    if not (shutil.which("useradd") and shutil.which("groupadd")):
        pytest.skip("useradd/groupadd are not installed, so no throwaway user can be created")
    suffix = secrets.token_hex(3)
    user, group = f"{prefix}-{suffix}", f"{prefix}g-{suffix}"
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


@pytest.fixture(scope="module")
def outsider() -> Iterator[Account]:
    """A throwaway user outside a throwaway group (used as the socket group)."""
    with throwaway_account("jqtest") as account:
        yield account


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
    with daemons_made(open_state_dir) as make:
        yield lambda *args, **options: make(*args, **options).start()
