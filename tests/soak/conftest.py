"""Soak tests: bounded under ``make test``, long under ``make soak`` (JOBQUEUE_SOAK=long).

Every soak test records one row in the session's ``SoakReport``; the table
is printed at the end of the session (visible with ``-s``) and written to a
file under the session's temporary directory. Each test also writes the
table so far to ``soak-summary.txt`` in its own ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.soak.support import SoakReport


@pytest.fixture(scope="session")
def soak_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoakReport]:
    report = SoakReport()
    yield report
    if report.rows:
        path = tmp_path_factory.mktemp("soak") / "soak-summary.txt"
        text = report.table()
        path.write_text(text + "\n")
        print(f"\n\nSoak summary ({report.mode} run), also in {path}:\n{text}")
