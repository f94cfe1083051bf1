"""Who may change which job: ``ownership.Ownership`` and the ``submitter`` record of a job."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue import errors
from jobqueue.model import Job, Submitter, now_stamp
from jobqueue.ownership import Ownership

DAEMON_UID, ADMIN_GID = 500, 77
RULES = Ownership(daemon_uid=DAEMON_UID, admin_gid=ADMIN_GID)
ALICE = Submitter.client(uid=1000, gid=1000, groups=[1000, 20], pid=42)
BOB = Submitter.client(uid=1001, gid=1001, groups=[], pid=43)
ROOT = Submitter.client(uid=0, gid=0, groups=[], pid=1)
DAEMON_USER = Submitter.client(uid=DAEMON_UID, gid=9, groups=[], pid=2)
ADMIN_BY_GROUP = Submitter.client(uid=1002, gid=1002, groups=[ADMIN_GID], pid=3)
ADMIN_BY_PRIMARY = Submitter.client(uid=1003, gid=ADMIN_GID, groups=[], pid=4)


@pytest.mark.parametrize(
    ("caller", "owner", "allowed"),
    [
        (ALICE, ALICE, True),
        (Submitter.client(uid=1000, gid=5, groups=[], pid=99), ALICE, True),  # same uid
        (BOB, ALICE, False),
        (ROOT, ALICE, True),
        (DAEMON_USER, ALICE, True),
        (ADMIN_BY_GROUP, ALICE, True),
        (ADMIN_BY_PRIMARY, ALICE, True),
        (None, ALICE, True),  # the daemon itself
        (ALICE, ALICE.for_child(7), True),  # a job of Alice's job is Alice's
        (BOB, ALICE.for_child(7), False),
        (ALICE, None, False),  # stored before submitters: admins only
        (ROOT, None, True),
        (ALICE, Submitter.daemon(), False),
        (ADMIN_BY_GROUP, Submitter.daemon(), True),
        (Submitter(by="client"), Submitter(by="client"), False),  # no identity, no match
    ],
)
def test_who_may_change_a_job(
    caller: Submitter | None, owner: Submitter | None, allowed: bool
) -> None:
    assert RULES.may_change_job(caller, owner) is allowed
    if allowed:
        RULES.check_job(caller, owner, 5, "cancel")
    else:
        with pytest.raises(errors.AccessDenied, match="may cancel job 5"):
            RULES.check_job(caller, owner, 5, "cancel")


def test_queue_wide_changes_are_for_admins() -> None:
    for admin in (None, ROOT, DAEMON_USER, ADMIN_BY_GROUP, ADMIN_BY_PRIMARY):
        RULES.check_queue(admin, "drain the queue")
    for user in (ALICE, BOB):
        with pytest.raises(errors.AccessDenied, match="may drain the queue"):
            RULES.check_queue(user, "drain the queue")
    assert not Ownership(daemon_uid=DAEMON_UID).is_admin(ADMIN_BY_GROUP)  # no admin group


def test_the_submitter_is_kept_in_the_job_record() -> None:
    child = ALICE.for_child(3)
    for submitter in (ALICE, child, Submitter.daemon()):
        job = Job.new(9, [{"OP_ID": "OP_TEST_DELAY", "duration": 0}], now_stamp(), submitter)
        data = job.to_dict()
        assert Job.from_dict(data).submitter == submitter
    assert ALICE.to_dict() == {
        "by": "client",
        "uid": 1000,
        "gid": 1000,
        "groups": [20, 1000],
        "pid": 42,
    }
    assert child.to_dict() == {**ALICE.to_dict(), "by": "job", "job": 3}
    assert Submitter.daemon().to_dict() == {"by": "daemon"}


def test_a_job_stored_before_submitters_loads_without_one() -> None:
    job = Job.new(9, [{"OP_ID": "OP_TEST_DELAY", "duration": 0}], now_stamp())
    data = job.to_dict()
    assert "submitter" not in data
    assert Job.from_dict(data).submitter is None


@pytest.mark.parametrize(
    "bad",
    [
        "alice",
        {"by": "someone"},
        {"by": "client", "uid": "0", "gid": 0},
        {"by": "client", "uid": 0},  # a uid without a gid
        {"by": "client", "uid": 0, "gid": 0, "groups": [True]},
        {"by": "job", "job": 1.5},
    ],
)
def test_a_malformed_submitter_makes_the_file_corrupt(bad: Any) -> None:
    data = Job.new(9, [{"OP_ID": "OP_TEST_DELAY", "duration": 0}], now_stamp()).to_dict()
    data["submitter"] = bad
    with pytest.raises(errors.JobFileCorrupted):
        Job.from_dict(data)
