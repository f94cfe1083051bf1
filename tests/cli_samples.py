"""The sample jobs the scripted daemon answers with in the CLI tests
(``test_cli_commands``, ``test_cli_docs``, ``test_cli_manage``, ``test_cli_query``):
live ``JOBS`` and ``ARCHIVED`` ones with timestamps from ``T0``, built with ``job``.
"""

from __future__ import annotations

from typing import Any

DELAY = {"OP_ID": "OP_TEST_DELAY", "duration": 1.0, "repeat": 0}
T0 = 1700000000  # 2023-11-14 22:13:20 UTC; the subprocesses run with TZ=UTC


def job(job_id: int, status: str, summary: list[str], **more: Any) -> dict[str, Any]:
    return {"id": job_id, "status": status, "priority": 0, "summary": summary, **more}


JOBS = [
    job(
        1,
        "success",
        ["OP_TEST_DELAY(1.0)"],
        received_ts=[T0, 0],
        start_ts=[T0 + 1, 0],
        end_ts=[T0 + 2, 250000],
        ops=[DELAY],
        opstatus=["success"],
        opresult=[None],
        oplog=[[[1, [T0 + 1, 0], "message", "Test delay iteration 1/1"]]],
        opstart=[[T0 + 1, 0]],
        opexec=[[T0 + 1, 100]],
        opend=[[T0 + 2, 250000]],
    ),
    job(
        2,
        "running",
        ["COMMAND_RUN(ls)"],
        received_ts=[T0 + 60, 0],
        start_ts=[T0 + 61, 0],
        ops=[{"OP_ID": "OP_COMMAND_RUN", "argv": ["ls", "-l", "my dir"]}],
    ),
    job(12, "queued", ["OP_TEST_DELAY(5)", "OP_TEST_DELAY(1)"], priority=-10),
]
ARCHIVED = [job(3, "error", ["OP_COMMAND_RUN(false)"], ops=[DELAY], opstatus=["error"])]
