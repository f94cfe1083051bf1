"""Start-up against a damaged or hostile state directory: the real daemon, issue 14.

Each test reproduces one defect found by attacking a daemon built from main
(items 5, 6, 7, 10 and the pid-file part of 11): ids reused after the
serial file was lost and an archived job overwritten; hand-damaged job
files that crashed or hung the start; start-up errors printed as bare
numbers; a state directory that others could write into, trusted as it was.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from jobqueue.storage.base import decode_job, encode_job
from tests.daemon_helper import Daemon

DELAY0 = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mounts)")
LAYOUT = [
    ("", 0o755),
    ("run", 0o755),
    ("run/commands", 0o700),
    ("log", 0o750),
    ("queue", 0o700),
    ("queue/archive", 0o700),
    ("output", 0o700),  # command output on the etcd store; checked when present
]


def _refused(daemon: Daemon) -> str:
    """Run the daemon, expect it to refuse to start; its one line of standard error."""
    result = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jobqueue-masterd: "), lines
    return lines[0]


def _layout(state_dir: Path) -> None:
    """The directories a daemon leaves behind, with its modes (none of its files)."""
    for place, mode in LAYOUT:
        path = state_dir / place
        path.mkdir(mode=mode, parents=True)
        path.chmod(mode)


def _finished_jobs(daemon: Daemon, count: int) -> list[int]:
    client = daemon.client()
    job_ids = [client.submit_job([DELAY0]) for _ in range(count)]
    for job_id in job_ids:
        assert daemon.wait_job(job_id) == "success"
    return job_ids


# -- item 5: ids and the archive ------------------------------------------------------------


def test_ids_continue_above_the_archive_when_the_serial_is_lost(
    daemon_factory: Callable[..., Daemon],
) -> None:
    first = daemon_factory().start()
    job_ids = _finished_jobs(first, 3)
    assert first.client().auto_archive_jobs(-1, 10) == [3, 0]
    queue = first.state_dir / "queue"
    # An archived job in a higher sub-directory, as after 20,001 jobs.
    high = decode_job((queue / "archive" / "0" / f"job-{job_ids[0]}").read_bytes())
    high.id = 20_001
    (queue / "archive" / "2").mkdir(mode=0o700)
    (queue / "archive" / "2" / "job-20001").write_bytes(encode_job(high))
    assert first.stop() == 0
    (queue / "serial").unlink()

    second = daemon_factory().start()
    client = second.client()
    assert client.submit_job([DELAY0]) == 20_002
    assert client.query_jobs([job_ids[1]], ["id", "status"]) == [[job_ids[1], "success"]]


def test_archiving_never_replaces_an_archived_job(daemon: Daemon) -> None:
    (job_id,) = _finished_jobs(daemon, 1)
    queue = daemon.state_dir / "queue"
    other = decode_job((queue / f"job-{job_id}").read_bytes())
    other.ops[0].result = "the archived one"
    (queue / "archive" / "0").mkdir(mode=0o700, exist_ok=True)
    archived = queue / "archive" / "0" / f"job-{job_id}"
    archived.write_bytes(encode_job(other))
    before = archived.read_bytes()

    client = daemon.client()
    assert client.archive_job(job_id) is False
    assert client.auto_archive_jobs(-1, 10) == [0, 0]
    assert archived.read_bytes() == before
    assert client.query_jobs(None, ["id"]) == [[job_id]]  # still live
    assert (queue / f"job-{job_id}").exists()
    assert f"Job {job_id} stays live" in daemon.log()


# -- item 6: hand-damaged job files -----------------------------------------------------------


def test_damaged_job_files_never_stop_or_hang_the_start(
    daemon_factory: Callable[..., Daemon],
) -> None:
    first = daemon_factory().start()
    (good,) = _finished_jobs(first, 1)
    assert first.stop() == 0
    queue = first.state_dir / "queue"
    text = (queue / f"job-{good}").read_text()
    spelled = f'"id":{good},'
    assert spelled in text
    planted = {
        "job-101": text.replace(spelled, '"id":1e999,'),
        "job-102": text.replace(spelled, '"id":102.7,'),
        "job-103": text.replace(spelled, '"id":true,'),
        "job-0104": text.replace(spelled, '"id":104,'),
    }
    for name, content in planted.items():
        (queue / name).write_text(content)
    os.mkfifo(queue / "job-109")
    (queue / "job-108").symlink_to("/dev/zero")
    (queue / "job-107").mkdir()
    (queue / "x.tmp").mkdir()

    second = daemon_factory().start()  # fails here on a traceback or a hang
    assert second.client().query_jobs(None, ["id"]) == [[good]]
    names = [*planted, "job-109", "job-108", "job-107"]
    assert sorted(os.listdir(queue / "corrupt")) == sorted(names)
    log = second.log()
    for name in names:
        assert f"Job file {name} is corrupt" in log
    assert "Traceback" not in log
    assert second.client().submit_job([DELAY0]) > 109


# -- item 7: start-up errors say what and where ------------------------------------------------


def test_a_state_dir_that_is_a_file_is_named(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    daemon.state_dir.write_text("not a directory\n")
    line = _refused(daemon)
    assert line == f"jobqueue-masterd: Refusing to start: {daemon.state_dir} is not a directory"


@ROOT_ONLY
@pytest.mark.parametrize("fresh", [True, False], ids=["empty", "used"])
def test_a_read_only_state_dir_is_named(daemon_factory: Callable[..., Daemon], fresh: bool) -> None:
    """The state dir is bind-mounted read-only in a mount namespace of the daemon's own."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    daemon = daemon_factory()
    daemon.state_dir.mkdir()
    if not fresh:
        daemon.start()
        assert daemon.stop() == 0
    state = str(daemon.state_dir)
    mount = f'mount --bind {state} {state} && mount -o remount,bind,ro {state} && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount here: {probe.stderr.decode(errors='replace').strip()}")
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", mount, "sh", *daemon.command()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    where = "run" if fresh else "queue/lock"
    assert line.startswith("jobqueue-masterd: ")
    assert line.endswith(f" {state}/{where}: Read-only file system") or line == (
        f"jobqueue-masterd: {state}/{where}: Read-only file system"
    )


# -- item 10: a state directory others could write to is refused --------------------------------

PLACES = [place for place, _ in LAYOUT]
#: Each place with one way of being writable by others: a /tmp-like sticky mode, a
#: group-writable one, a world-writable one.
MODES = [0o1777, 0o775, 0o777, 0o777, 0o757, 0o770, 0o770]


@pytest.mark.parametrize(
    ("place", "mode"),
    list(zip(PLACES, MODES, strict=True)),
    ids=[f"{place or 'state'}-{mode:04o}" for place, mode in zip(PLACES, MODES, strict=True)],
)
def test_a_directory_writable_by_others_is_refused(
    daemon_factory: Callable[..., Daemon], place: str, mode: int
) -> None:
    daemon = daemon_factory()
    _layout(daemon.state_dir)
    path = daemon.state_dir / place if place else daemon.state_dir
    path.chmod(mode)
    line = _refused(daemon)
    assert f"Refusing to start: {str(path).rstrip('/')} is writable by group or others" in line
    assert f"(mode {mode:04o})" in line


@ROOT_ONLY
@pytest.mark.parametrize("place", PLACES)
def test_a_directory_of_another_user_is_refused(
    daemon_factory: Callable[..., Daemon], place: str
) -> None:
    daemon = daemon_factory()
    _layout(daemon.state_dir)
    path = daemon.state_dir / place if place else daemon.state_dir
    os.chown(path, 65534, 65534)
    line = _refused(daemon)
    assert f"{str(path).rstrip('/')} is owned by " in line and "(uid 65534)" in line


@pytest.mark.parametrize("place", ["run", "run/commands", "queue"])
def test_a_linked_directory_is_refused(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, place: str
) -> None:
    daemon = daemon_factory()
    _layout(daemon.state_dir)
    path = daemon.state_dir / place
    elsewhere = tmp_path / "elsewhere"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    line = _refused(daemon)
    assert f"{path} is a symbolic link" in line


def test_private_directories_are_closed_to_others(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """Readable but not writable by others: nothing can have been planted; narrowed to 0700."""
    daemon = daemon_factory()
    for place in ("queue", "run/commands"):
        (daemon.state_dir / place).mkdir(parents=True, mode=0o755)
        (daemon.state_dir / place).chmod(0o755)
    daemon.start()
    for place in ("queue", "run/commands"):
        assert stat.S_IMODE((daemon.state_dir / place).stat().st_mode) == 0o700
    assert stat.S_IMODE((daemon.state_dir / "run").stat().st_mode) == 0o755  # sockets reachable


def test_the_pid_file_is_never_written_through_a_planted_link(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The pid file's temporary name holds the daemon's pid: planted just before it starts."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    first = daemon_factory().start()
    assert first.stop() == 0
    run_dir = first.state_dir / "run"

    def plant() -> None:  # runs in the child, whose pid the daemon will have
        os.symlink(victim, run_dir / f"jobqueue-masterd.pid.{os.getpid()}.tmp")

    daemon = daemon_factory(preexec_fn=plant).start()
    assert daemon.proc is not None
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    # Item 11: the pid file is written without --daemonize too.
    assert (run_dir / "jobqueue-masterd.pid").read_text() == f"{daemon.proc.pid}\n"
    assert not (run_dir / "jobqueue-masterd.pid").is_symlink()


def test_records_of_commands_in_a_world_writable_directory_kill_nothing(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """A planted record naming a live process group: the daemon refuses to start at all."""
    first = daemon_factory().start()
    assert first.stop() == 0
    commands = first.state_dir / "run" / "commands"
    commands.chmod(0o777)
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        stat_fields = Path(f"/proc/{victim.pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        (commands / str(victim.pid)).write_text(f"1 {boot_id} {stat_fields[19]}\n")
        line = _refused(first)
        assert f"{commands} is writable by group or others" in line
        assert victim.poll() is None
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
