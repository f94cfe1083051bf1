"""The daemon's process settings that are not about jobs (``daemonproc``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from jobqueue import daemonproc

#: Frees a block big enough to raise glibc's own threshold, then takes and
#: frees another one, and prints how far the RSS stayed above its start.
_PROBE = textwrap.dedent(
    """
    import sys
    from jobqueue import daemonproc

    def rss_kib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    if sys.argv[1] == "set":
        assert daemonproc.return_large_blocks()
    size = 8 * 1024 * 1024
    block = bytearray(size)
    del block
    start = rss_kib()
    block = bytearray(size)
    del block
    print(rss_kib() - start)
    """
)


def _kept_kib(mode: str) -> int:
    env = {key: value for key, value in os.environ.items() if key != daemonproc.MMAP_THRESHOLD_ENV}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_freed_large_blocks_go_back_to_the_system() -> None:
    kept_by_default = _kept_kib("default")
    if kept_by_default < 4096:
        pytest.skip("this C library gives freed 8 MiB blocks back by itself")
    assert _kept_kib("set") < 1024


def test_an_operators_threshold_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(daemonproc.MMAP_THRESHOLD_ENV, "1048576")
    assert daemonproc.return_large_blocks() is False
