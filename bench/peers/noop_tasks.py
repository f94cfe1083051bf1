"""The no-op job every peer runs; importable by RQ's workers as ``noop_tasks.noop``."""


def noop() -> None:
    """Do nothing: the benchmark measures the queue, not the work."""
    return None
