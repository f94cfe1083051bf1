"""Shared fixtures: the real daemon under tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helper import Daemon, state_dir_under


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Make daemons (not started) on one state dir under tmp_path; all are stopped after."""
    made: list[Daemon] = []
    state_dir = state_dir_under(tmp_path)

    def make(*args: str, workers: int = 4, **options: Any) -> Daemon:
        daemon = Daemon(state_dir, *args, workers=workers, **options)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill9()


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A started daemon with 4 workers."""
    return daemon_factory().start()
