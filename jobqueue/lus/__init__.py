"""The logical units: built-in families and third-party plugins.

Each family module exposes ``PAIRS``, a list of (opcode class, LU class).
Third-party packages add theirs through the entry-point group
``jobqueue.opcodes``: each entry point names a callable returning such a list
(or the list itself).
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata
from typing import Any

from jobqueue.errors import GenericError
from jobqueue.lus import command, test
from jobqueue.opcodes import Registry

ENTRY_POINT_GROUP = "jobqueue.opcodes"


def builtin_registry() -> Registry:
    """A new registry holding every built-in opcode."""
    registry = Registry()
    registry.register_all(test.PAIRS)
    registry.register_all(command.PAIRS)
    return registry


def _pairs_of(obj: Any) -> Any:
    return obj() if callable(obj) else obj


def load_plugins(
    registry: Registry, modules: list[str] | None = None, logger: logging.Logger | None = None
) -> list[str]:
    """Register third-party opcodes: entry points, then ``modules`` (``--plugin``).

    A module named in ``modules`` must expose ``PAIRS`` or ``opcode_pairs()``.
    Returns the OP_IDs added; a broken plugin raises ``GenericError``.
    """
    log = logger or logging.getLogger(__name__)
    before = set(registry.op_ids())
    sources: list[tuple[str, Any]] = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        sources.append((f"entry point {entry.name}", lambda entry=entry: entry.load()))
    for name in modules or []:
        sources.append((f"module {name}", lambda name=name: _module_pairs(name)))
    for label, load in sources:
        try:
            registry.register_all(_pairs_of(load()))
        except Exception as err:
            raise GenericError(f"Cannot load opcode plugin ({label}): {err}") from err
        log.info("Loaded opcode plugin %s", label)
    added = sorted(set(registry.op_ids()) - before)
    if added:
        log.info("Plugin opcodes: %s", ", ".join(added))
    return added


def _module_pairs(name: str) -> Any:
    module = importlib.import_module(name)
    if hasattr(module, "opcode_pairs"):
        return module.opcode_pairs()
    return module.PAIRS
