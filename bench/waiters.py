"""Section 4's crowd: many clients in WaitForJobChange, in a process of their own.

``python -m bench.waiters SOCKET TIMEOUT COUNT JOB_ID...`` opens COUNT
connections, one thread each, spread over the jobs; each loops on
``WaitForJobChange(job, ["status"], ...)`` with TIMEOUT seconds until its job
is finalized. It prints ``ready`` once every client has had its first
answer (``failed: <reason>`` and exit status 1 if that does not happen);
then, for each line read from stdin, ``waiting N`` (how many still wait).
At end of input it exits at once.

The crowd runs apart from the measuring client on purpose: 500 Python
threads in the measuring process would hold its interpreter lock whenever
the watched change arrives, and the figure would be the benchmark's own
queueing for that lock, not the daemon's latency.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from bench.daemon import FINALIZED, client_class

START_TIMEOUT = 60.0


class Crowd:
    """The waiting clients and how many of them are waiting now."""

    def __init__(self, socket_path: str, timeout: float, count: int, job_ids: list[int]) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.count = count
        self.job_ids = job_ids
        self.lock = threading.Lock()
        self.waiting = 0
        self.errors: list[BaseException] = []

    def start(self) -> None:
        for index in range(self.count):
            threading.Thread(target=self._wait, args=(index,), daemon=True).start()

    def _wait(self, index: int) -> None:
        job_id = self.job_ids[index % len(self.job_ids)]
        counted = False
        try:
            client = client_class()(path=self.socket_path)
            info: Any = None
            serial: Any = None
            while True:
                answer = client.wait_for_job_change(job_id, ["status"], info, serial, self.timeout)
                if not counted:
                    counted = True
                    with self.lock:
                        self.waiting += 1
                if not answer:  # job lost: nothing left to wait for
                    break
                if answer == "nochange":
                    continue
                info, entries = answer
                serial = max([entry[0] for entry in entries], default=serial)
                if info[0] in FINALIZED:
                    break
        except BaseException as error:
            self.errors.append(error)
        finally:
            if counted:
                with self.lock:
                    self.waiting -= 1

    def wait_started(self) -> str | None:
        """None once every client waits; the reason otherwise."""
        deadline = time.monotonic() + START_TIMEOUT
        while self.waiting < self.count and not self.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.errors or self.waiting < self.count:
            return f"only {self.waiting} of {self.count} waiters started: {self.errors[:3]}"
        return None


def main(argv: list[str]) -> int:
    socket_path, timeout, count, *job_ids = argv
    crowd = Crowd(socket_path, float(timeout), int(count), [int(job) for job in job_ids])
    crowd.start()
    failure = crowd.wait_started()
    print(f"failed: {failure}" if failure else "ready", flush=True)
    if failure:
        return 1
    for _ in sys.stdin:
        print(f"waiting {crowd.waiting}", flush=True)
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main(sys.argv[1:]))  # leave the client threads where they are
