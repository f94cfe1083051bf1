"""ProcessGroups: records of the commands' process groups, and stopping leftovers."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.children import Leftover, ProcessGroups
from tests.daemon_helper import wait_until
from tests.lu_harness import group_is_gone

JOB_ID = 42
#: Long enough that a group stopped by SIGTERM is never waited for in full.
GRACE = 10.0


class Commands:
    """Starts commands as OP_COMMAND_RUN does; kills whatever is left afterwards."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **options: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, **options)
        self.started.append(proc)
        return proc

    def shell(self, script: str, members: int = 1) -> subprocess.Popen[bytes]:
        """``sh -c script``; returns once its group has ``members`` live processes."""
        proc = self.start(["sh", "-c", script])
        wait_until(lambda: len(live_members(proc.pid)) >= members, what=f"{members} processes")
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


@pytest.fixture
def commands() -> Iterator[Commands]:
    made = Commands()
    yield made
    made.kill_all()


@pytest.fixture
def groups(tmp_path: Path) -> ProcessGroups:
    directory = tmp_path / "commands"
    directory.mkdir(mode=0o700)
    return ProcessGroups(str(directory), logger=logging.getLogger("test.children"))


def live_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that have not exited."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def records(groups: ProcessGroups) -> list[str]:
    return sorted(os.listdir(groups.directory))


def rewrite(groups: ProcessGroups, pgid: int, index: int, value: str) -> None:
    """Replace one field (0 job id, 1 boot id, 2 start time) of a record."""
    path = Path(groups.directory, str(pgid))
    fields = path.read_text().split()
    fields[index] = value
    path.write_text(" ".join(fields) + "\n")


def stop_and_time(groups: ProcessGroups, grace: float) -> tuple[list[Leftover], float]:
    started = time.monotonic()
    stopped = groups.stop_leftovers(grace)
    return stopped, time.monotonic() - started


class TestRecords:
    def test_started_writes_job_boot_and_start_time(
        self, groups: ProcessGroups, commands: Commands
    ) -> None:
        proc = commands.start(["sleep", "60"])
        groups.started(proc.pid, JOB_ID)
        assert records(groups) == [str(proc.pid)]
        job_id, boot_id, start_time = Path(groups.directory, str(proc.pid)).read_text().split()
        assert job_id == str(JOB_ID)
        assert boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        assert start_time == stat.rsplit(")", 1)[1].split()[19]

    def test_ended_removes_the_record(self, groups: ProcessGroups, commands: Commands) -> None:
        proc = commands.start(["true"])
        groups.started(proc.pid, JOB_ID)
        proc.wait(10)
        groups.ended(proc.pid)
        assert records(groups) == []
        groups.ended(proc.pid)  # a missing record is fine

    def test_a_failure_to_record_is_only_logged(
        self, tmp_path: Path, commands: Commands, caplog: pytest.LogCaptureFixture
    ) -> None:
        groups = ProcessGroups(str(tmp_path / "missing"), logger=logging.getLogger("test.c"))
        proc = commands.start(["true"])
        with caplog.at_level(logging.WARNING):
            groups.started(proc.pid, JOB_ID)
        assert f"Cannot record process group {proc.pid} of job {JOB_ID}" in caplog.text
        assert groups.stop_leftovers(GRACE) == []


class TestStopLeftovers:
    def test_stops_a_recorded_group_and_its_children(
        self, groups: ProcessGroups, commands: Commands
    ) -> None:
        proc = commands.shell("sleep 60 & sleep 60", members=2)
        groups.started(proc.pid, JOB_ID)
        stopped, elapsed = stop_and_time(groups, GRACE)
        assert stopped == [Leftover(JOB_ID, proc.pid)]
        assert elapsed < GRACE  # SIGTERM was enough; no wait for the grace period
        assert proc.wait(10) == -signal.SIGTERM
        assert wait_until(lambda: group_is_gone(proc.pid), what="the group to be gone")
        assert records(groups) == []

    def test_sigkill_after_the_grace_period(
        self, groups: ProcessGroups, commands: Commands
    ) -> None:
        proc = commands.shell("trap '' TERM; sleep 60", members=2)
        groups.started(proc.pid, JOB_ID)
        stopped, elapsed = stop_and_time(groups, 0.3)
        assert stopped == [Leftover(JOB_ID, proc.pid)]
        assert elapsed >= 0.3  # SIGTERM was ignored
        assert proc.wait(10) == -signal.SIGKILL
        assert wait_until(lambda: group_is_gone(proc.pid), what="the group to be gone")

    def test_group_whose_leader_is_gone(self, groups: ProcessGroups, commands: Commands) -> None:
        proc = commands.start(["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        proc.stdout.close()
        groups.started(proc.pid, JOB_ID)
        assert proc.wait(10) == 0  # the leader is gone; its child still runs in the group
        assert live_members(proc.pid) == [child]
        assert groups.stop_leftovers(GRACE) == [Leftover(JOB_ID, proc.pid)]
        assert wait_until(lambda: group_is_gone(proc.pid), what="the group to be gone")

    def test_command_name_with_parentheses(
        self, groups: ProcessGroups, commands: Commands, tmp_path: Path
    ) -> None:
        strange = tmp_path / "a) b (c"
        strange.symlink_to(subprocess.check_output(["sh", "-c", "command -v sleep"]).strip())
        proc = commands.start([str(strange), "60"])
        groups.started(proc.pid, JOB_ID)
        assert groups.stop_leftovers(GRACE) == [Leftover(JOB_ID, proc.pid)]
        assert proc.wait(10) == -signal.SIGTERM

    @pytest.mark.parametrize(
        ("field", "value"), [(1, "00000000-0000-0000-0000-000000000000"), (2, "1")]
    )
    def test_another_boot_or_start_time_is_left_alone(
        self, groups: ProcessGroups, commands: Commands, field: int, value: str
    ) -> None:
        proc = commands.start(["sleep", "60"])
        groups.started(proc.pid, JOB_ID)
        rewrite(groups, proc.pid, field, value)  # a record from before a reboot / a reused pid
        assert groups.stop_leftovers(GRACE) == []
        assert proc.poll() is None
        assert records(groups) == []

    def test_record_of_a_finished_command_is_removed(
        self, groups: ProcessGroups, commands: Commands
    ) -> None:
        proc = commands.start(["true"])
        groups.started(proc.pid, JOB_ID)
        proc.wait(10)
        assert groups.stop_leftovers(GRACE) == []
        assert records(groups) == []

    def test_garbage_is_removed(self, groups: ProcessGroups) -> None:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        garbage = [("123", "garbage"), ("124", ""), ("125.tmp", "1 2 3"), ("x", "1"), ("²", "1")]
        garbage += [("0", f"1 {boot_id} 1"), ("1", f"1 {boot_id} 1")]  # never our own group
        for name, text in garbage:
            Path(groups.directory, name).write_text(text)
        assert groups.stop_leftovers(GRACE) == []
        assert records(groups) == []

    def test_missing_directory(self, tmp_path: Path) -> None:
        assert ProcessGroups(str(tmp_path / "missing")).stop_leftovers(GRACE) == []


class TestPlantedRecords:
    """Only records the daemon's own user wrote in its own 0700 directory are acted on."""

    requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")

    @requires_root
    def test_a_record_of_another_user_is_ignored(
        self, groups: ProcessGroups, commands: Commands, caplog: pytest.LogCaptureFixture
    ) -> None:
        proc = commands.start(["sleep", "60"])
        groups.started(proc.pid, JOB_ID)
        os.chown(Path(groups.directory, str(proc.pid)), 65534, 65534)  # as if nobody wrote it
        with caplog.at_level(logging.WARNING):
            assert groups.stop_leftovers(GRACE) == []
        assert proc.poll() is None
        assert "written by uid 65534, not by the daemon's user" in caplog.text
        assert records(groups) == []

    def test_a_linked_record_is_ignored(
        self, groups: ProcessGroups, commands: Commands, tmp_path: Path
    ) -> None:
        proc = commands.start(["sleep", "60"])
        groups.started(proc.pid, JOB_ID)
        real = Path(groups.directory, str(proc.pid))
        elsewhere = tmp_path / "elsewhere"
        real.rename(elsewhere)
        real.symlink_to(elsewhere)
        assert groups.stop_leftovers(GRACE) == []
        assert proc.poll() is None

    @pytest.mark.parametrize("mode", [0o755, 0o777, 0o1777])
    def test_records_in_a_directory_open_to_others_are_ignored(
        self,
        groups: ProcessGroups,
        commands: Commands,
        caplog: pytest.LogCaptureFixture,
        mode: int,
    ) -> None:
        proc = commands.start(["sleep", "60"])
        groups.started(proc.pid, JOB_ID)
        os.chmod(groups.directory, mode)
        with caplog.at_level(logging.WARNING):
            assert groups.stop_leftovers(GRACE) == []
        assert proc.poll() is None
        assert f"mode {mode:04o}, not 0700" in caplog.text
        assert records(groups) == [str(proc.pid)]  # left for whoever looks into it

    @requires_root
    def test_records_in_a_directory_of_another_user_are_ignored(
        self, groups: ProcessGroups, commands: Commands
    ) -> None:
        proc = commands.start(["sleep", "60"])
        groups.started(proc.pid, JOB_ID)
        os.chown(groups.directory, 65534, 65534)
        assert groups.stop_leftovers(GRACE) == []
        assert proc.poll() is None

    def test_started_never_writes_through_a_planted_link(
        self, groups: ProcessGroups, commands: Commands, tmp_path: Path
    ) -> None:
        victim = tmp_path / "victim"
        victim.write_text("precious\n")
        victim.chmod(0o600)
        proc = commands.start(["sleep", "60"])
        Path(groups.directory, f"{proc.pid}.tmp").symlink_to(victim)
        groups.started(proc.pid, JOB_ID)
        assert victim.read_text() == "precious\n"
        assert records(groups) == [str(proc.pid)]
        assert Path(groups.directory, str(proc.pid)).read_text().startswith(f"{JOB_ID} ")
