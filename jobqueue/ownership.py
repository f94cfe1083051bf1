"""Who may change a job, or the queue as a whole: pure rules over ``model.Submitter``.

The queue asks here before it cancels, kills, reprioritises or archives a
job, and before a change of the whole queue (the drain flag, auto-archiving,
pruning the archive, submitting past the drain flag, pausing the cleaner).

* An *admin* is root, the daemon's own user, or a member (primary or
  supplementary group) of the admin group (``--admin-group``).
* A job may be changed by an admin and by its owner: the uid recorded as its
  submitter. A job an opcode submitted has its parent's submitter, so the
  owner of a fan-out owns its item jobs too. A job without a recorded
  identity (stored before submitters were recorded, or made by the daemon
  itself) belongs to the admins alone.
* The queue as a whole is changed by admins only.

A ``caller`` of None is the daemon itself (or an in-process user such as a
test): always allowed. Everyone else gets ``AccessDenied``, which travels
as ``PermissionError``.
"""

from __future__ import annotations

import dataclasses

from jobqueue.errors import AccessDenied
from jobqueue.model import Submitter


@dataclasses.dataclass(frozen=True)
class Ownership:
    """The rules above, for a daemon running as ``daemon_uid`` with ``admin_gid``."""

    daemon_uid: int
    admin_gid: int | None = None

    def is_admin(self, caller: Submitter | None) -> bool:
        if caller is None:
            return True
        if caller.uid is None:
            return False
        if caller.uid in (0, self.daemon_uid):
            return True
        return self.admin_gid is not None and caller.in_group(self.admin_gid)

    def may_change_job(self, caller: Submitter | None, owner: Submitter | None) -> bool:
        """Whether ``caller`` may cancel, reprioritise or archive a job submitted by ``owner``."""
        if self.is_admin(caller):
            return True
        assert caller is not None
        return owner is not None and owner.uid is not None and owner.uid == caller.uid

    def check_job(
        self, caller: Submitter | None, owner: Submitter | None, job_id: int, action: str
    ) -> None:
        """Raise ``AccessDenied`` unless ``caller`` may ``action`` job ``job_id``."""
        if not self.may_change_job(caller, owner):
            raise AccessDenied(
                f"Permission denied: only the job's submitter, root and the admin group may "
                f"{action} job {job_id}"
            )

    def check_queue(self, caller: Submitter | None, action: str) -> None:
        """Raise ``AccessDenied`` unless ``caller`` is an admin."""
        if not self.is_admin(caller):
            raise AccessDenied(
                f"Permission denied: only root, the daemon's user and the admin group may {action}"
            )
