"""Building opcodes and jobs from command-line arguments (pure functions).

An opcode is a dict with an ``OP_ID`` and its parameters; a job is a list
of opcodes. Invalid input raises ValueError with a message for the user.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence

from jobqueue.constants import FINALIZED

# Start-up speed: ``typing`` is imported for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Opcode = dict[str, Any]
    Job = list[Opcode]

OP_COMMAND_RUN = "OP_COMMAND_RUN"
OP_COMMAND_FANOUT = "OP_COMMAND_FANOUT"
OP_TEST_DELAY = "OP_TEST_DELAY"
#: The placeholder that ``fanout`` replaces with each item.
ITEM_PLACEHOLDER = "{item}"
_DEPEND_STATUSES = sorted(status.value for status in FINALIZED)


def parse_depends(text: str) -> list[Any]:
    """Parse ``ID[:STATUS,...]`` into a ``[id, [statuses]]`` dependency.

    ``ID`` may be negative (relative to the jobs of the same submission);
    no status means any final status.
    """
    id_text, _, status_text = text.partition(":")
    try:
        job_id = int(id_text)
    except ValueError:
        raise ValueError(f"Invalid job id '{id_text}' in dependency '{text}'") from None
    statuses = [part.strip() for part in status_text.split(",") if part.strip()]
    for status in statuses:
        if status not in _DEPEND_STATUSES:
            raise ValueError(
                f"Invalid status '{status}' in dependency '{text}';"
                f" choose from {', '.join(_DEPEND_STATUSES)}"
            )
    return [job_id, statuses]


def parse_env(text: str) -> tuple[str, str]:
    """Parse ``KEY=VALUE``; the value may be empty, the key may not."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"Invalid environment setting '{text}': expected KEY=VALUE")
    return key, value


def parse_env_name(text: str) -> str:
    """An environment variable's name: not empty, without ``=``."""
    if not text or "=" in text:
        raise ValueError(f"Invalid environment variable name '{text}'")
    return text


def environment(
    settings: Sequence[tuple[str, str]],
    from_caller: Sequence[str],
    all_of_caller: bool,
    caller: Mapping[str, str],
) -> dict[str, str]:
    """A command's ``env``: the caller's (all, or the named variables), then ``settings``.

    A named variable the caller does not have is an error.
    """
    env = dict(caller) if all_of_caller else {}
    for name in from_caller:
        if name not in caller:
            raise ValueError(f"--env-from-caller {name}: {name} is not set in your environment")
        env[name] = caller[name]
    env.update(settings)
    return env


def encode_stdin(data: bytes) -> str:
    """The ``stdin`` parameter of ``OP_COMMAND_RUN``: ``data`` in base64."""
    import base64

    return base64.b64encode(data).decode("ascii")


def run_opcode(
    argv: Sequence[str],
    locks: Sequence[str] = (),
    shared_locks: Sequence[str] = (),
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
) -> Opcode:
    """An ``OP_COMMAND_RUN`` opcode running ``argv``; ``stdin`` only when given."""
    if not argv:
        raise ValueError("No command given")
    opcode: Opcode = {
        "OP_ID": OP_COMMAND_RUN,
        "argv": list(argv),
        "locks": list(locks),
        "shared_locks": list(shared_locks),
        "timeout": timeout,
        "env": dict(env or {}),
        "cwd": cwd,
    }
    if stdin is not None:
        opcode["stdin"] = encode_stdin(stdin)
    return opcode


def fanout_opcode(
    argv: Sequence[str],
    items: Sequence[str],
    locks: Sequence[str] = (),
    then_command: str | None = None,
    *,
    shared_locks: Sequence[str] = (),
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Opcode:
    """An ``OP_COMMAND_FANOUT`` opcode: ``argv`` once per item, then a command.

    ``shared_locks``, ``timeout``, ``env`` and ``cwd`` are included only
    when given; the last command runs in ``cwd`` too, with ``env``.
    """
    if not argv:
        raise ValueError("No command given")
    if not items:
        raise ValueError("No items given")
    opcode: Opcode = {
        "OP_ID": OP_COMMAND_FANOUT,
        "argv": list(argv),
        "items": list(items),
        "locks": list(locks),
    }
    if shared_locks:
        opcode["shared_locks"] = list(shared_locks)
    if timeout is not None:
        opcode["timeout"] = timeout
    if env:
        opcode["env"] = dict(env)
    if cwd is not None:
        opcode["cwd"] = cwd
    if then_command is not None:
        opcode["then"] = [run_opcode(shlex.split(then_command), env=env, cwd=cwd)]
    return opcode


def delay_opcode(duration: float, repeat: int = 0) -> Opcode:
    """An ``OP_TEST_DELAY`` opcode sleeping ``duration`` seconds, ``repeat`` more times."""
    if duration < 0:
        raise ValueError("The duration must not be negative")
    if repeat < 0:
        raise ValueError("The repeat count must not be negative")
    return {"OP_ID": OP_TEST_DELAY, "duration": duration, "repeat": repeat}


def parse_items(text: str) -> list[str]:
    """Items of an items file: one per line, blank lines and ``#`` comments skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _check_job(job: Any, where: str) -> Job:
    """``job`` if it is a non-empty list of opcodes with a string ``OP_ID``."""
    if not isinstance(job, list) or not job:
        raise ValueError(f"{where}: a job must be a non-empty list of opcodes")
    for opcode in job:
        if not isinstance(opcode, dict) or not isinstance(opcode.get("OP_ID"), str):
            raise ValueError(f"{where}: every opcode must be an object with an OP_ID")
    return job


def parse_jobs(text: str) -> tuple[list[Job], bool]:
    """Parse a job file; return its jobs and whether it held several.

    The file holds a JSON list of opcodes (one job) or a list of such lists.
    """
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"Not valid JSON: {err}") from None
    if isinstance(data, list) and data and all(isinstance(item, list) for item in data):
        return [_check_job(job, f"Job {index + 1}") for index, job in enumerate(data)], True
    return [_check_job(data, "The job")], False


def apply_options(
    job: Job,
    priority: int | None = None,
    depends: Sequence[list[Any]] = (),
    comment: str | None = None,
) -> Job:
    """A copy of ``job`` with the generic opcode options set on every opcode."""
    result = []
    for opcode in job:
        updated = dict(opcode)
        if priority is not None:
            updated["priority"] = priority
        if depends:
            updated["depends"] = [list(dep) for dep in depends]
        if comment is not None:
            updated["comment"] = comment
        result.append(updated)
    return result


def retry_job(ops: Sequence[Opcode], job_id: int) -> Job:
    """The opcodes of a new job repeating ``ops`` of job ``job_id``.

    Dependencies are dropped (they were met or failed once already) and the
    comment says where the job came from.
    """
    result = []
    for opcode in ops:
        updated = {key: value for key, value in opcode.items() if key != "depends"}
        updated["comment"] = f"Retry of job {job_id}"
        result.append(updated)
    return result
