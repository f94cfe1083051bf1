"""One valid argument list for every LUXI method, for tests that mutate or probe them."""

from __future__ import annotations

from typing import Any

DELAY0 = {"OP_ID": "OP_TEST_DELAY", "duration": 0}

#: Job id 1 stands for "a job the test made"; callers may substitute their own.
VALID_CALLS: dict[str, list[Any]] = {
    "SubmitJob": [[DELAY0]],
    "SubmitJobToDrainedQueue": [[DELAY0]],
    "SubmitManyJobs": [[[DELAY0], [{**DELAY0, "depends": [[-1, []]]}]]],
    "WaitForJobChange": [1, ["status"], None, None, 0],
    "ReadJobOutput": [1, {"stdout": 0, "stderr": -10}, 1024, 0],
    "CancelJob": [1, False],
    "ChangeJobPriority": [1, 10],
    "ArchiveJob": [1],
    "AutoArchiveJobs": [3600, 1],
    "PruneArchive": [86400, 1],
    "QueryJobs": [[1], ["id", "status"]],
    "Query": ["job", ["id"], None, False],
    "QueryFields": ["job", None],
    "SetDrainFlag": [False],
    "SetWatcherPause": [None],
    "QueryConfigValues": [["drain_flag"]],
    "ChangeJobStartTime": [1, None],
    "ReplaceFilter": [None, 0, [["jobid", ["=", "id", 999999]]], "CONTINUE", []],
    "DeleteFilter": ["00000000-0000-4000-8000-000000000000"],
    "SetMaxRunningJobs": [4],
    "QueryMetrics": [],
}

#: Values of every JSON type, and some that are valid JSON but nothing else.
WRONG_VALUES: list[Any] = [
    None,
    True,
    -1,
    1.5,
    10**400,
    "",
    "x\x00\x03y",
    [],
    [[]],
    {},
    {"OP_ID": None},
]
