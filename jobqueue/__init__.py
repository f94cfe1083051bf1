"""jobqueue: a durable, priority-driven job-queue daemon.

The client-facing names live here; everything else is internal.
"""

from jobqueue.constants import Status
from jobqueue.errors import GenericError

__version__ = "0.1.0"

__all__ = ["GenericError", "Status", "__version__"]
