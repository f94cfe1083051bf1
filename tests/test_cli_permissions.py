"""jobctl and the example systemd unit as users other than the daemon's (needs root).

A forked child drops to a throwaway user (see ``tests/accounts.py``)
and runs jobctl's ``main`` in-process, against the real daemon.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

from jobqueue.cli.context import Context
from jobqueue.cli.main import main
from tests import accounts
from tests.accounts import Account, call, run_as
from tests.daemon_helper import Daemon
from tests.luxi_samples import DELAY0

outsider = accounts.outsider  # fixtures shared with the permission tests
open_state_dir = accounts.open_state_dir
make_daemon = accounts.make_daemon
#: The mode the example unit gives the state directory (StateDirectoryMode=).
UNIT_STATE_DIR_MODE = 0o711


def jobctl_in_child(*args: str) -> Callable[[], Any]:
    """An action for ``run_as``: jobctl's main with ``args``; returns (code, out, err)."""

    def action() -> Any:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(args), context=Context(None, args[1], stdout=out, stderr=err))
        return [code, out.getvalue(), err.getvalue()]

    return action


def test_read_only_commands_fall_back_to_the_query_socket(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon("--query-socket-public")  # 0660 by default: outsiders read nothing
    job_id = daemon.client().submit_job([DELAY0])
    daemon.wait_job(job_id)
    state = str(daemon.state_dir)
    as_outsider = (outsider.uid, outsider.gid, [])
    code, out, err = run_as(
        *as_outsider, jobctl_in_child("--state-dir", state, "list", "-o", "id", "--no-headers")
    )["ok"]
    assert (code, out, err) == (0, f"{job_id}\n", "")
    code, _, err = run_as(*as_outsider, jobctl_in_child("--state-dir", state, "delay", "0"))["ok"]
    assert code == 4 and err.startswith("Permission denied")


def test_the_unit_state_dir_mode_lets_the_socket_group_in_and_no_further(
    outsider: Account, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon("--socket-group", outsider.other_group)
    member = (outsider.uid, outsider.gid, [outsider.other_gid])
    master = daemon.paths.master_socket

    os.chmod(daemon.state_dir, 0o700)  # what the unit had: the group is locked out
    assert run_as(*member, lambda: call(master, "SubmitJob", [DELAY0])) == {
        "error": "PermissionError",
        "errno": 13,
    }
    os.chmod(daemon.state_dir, UNIT_STATE_DIR_MODE)
    outcome = run_as(*member, lambda: call(master, "SubmitJob", [DELAY0]))
    assert outcome["ok"]["success"] is True
    for private in (daemon.state_dir, daemon.state_dir / "queue", daemon.paths.commands_dir):
        assert run_as(*member, lambda p=private: os.listdir(p))["errno"] == 13, private
