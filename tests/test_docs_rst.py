"""Every reStructuredText file of the project parses without a warning.

A malformed table or a broken definition list renders as an error block
(on a forge, in ``make man``) instead of the text; docutils finds them.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

docutils_core = pytest.importorskip("docutils.core")

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.rst", *(ROOT / "doc").glob("*.rst")])


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_the_document_parses_cleanly(path: Path) -> None:
    warnings = io.StringIO()
    docutils_core.publish_string(
        path.read_text(),
        source_path=str(path),
        writer="null",
        settings_overrides={
            "report_level": 2,
            "halt_level": 5,
            "warning_stream": warnings,
            "syntax_highlight": "none",
        },
    )
    assert warnings.getvalue() == ""
