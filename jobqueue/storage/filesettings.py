"""The file store's settings: the format version, the drain flag, named settings, filter rules.

Layout (names in ``layout``)::

    queue/version          the format version, one line
    queue/drain            exists while the queue is drained (empty)
    queue/<setting>        one named setting (``base.SETTINGS``), one line of text
    queue/filters/<uuid>   one job filter rule, JSON

Every change is durable before it returns: files are replaced through
``SmallFiles``, and a removal is followed by a sync of its directory. A
drain flag or setting whose removal cannot be made durable is put back.

Thread safety: the methods may be called from any thread; they keep no
state of their own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

from jobqueue import constants, safeio
from jobqueue.errors import GenericError, JobQueueError
from jobqueue.storage import layout
from jobqueue.storage.base import check_setting
from jobqueue.storage.filedisk import SMALL_FILE_LIMIT, Disk, SmallFiles, storage_error


class FileSettings:
    """The settings files of one queue directory; used by ``FileJobStore`` only."""

    def __init__(
        self, queue_dir: str, disk: Disk, small_files: SmallFiles, logger: logging.Logger
    ) -> None:
        self.queue_dir = queue_dir
        self.filters_dir = os.path.join(queue_dir, layout.FILTERS_DIR)
        self._disk = disk
        self._small_files = small_files
        self._log = logger

    def _path(self, name: str) -> str:
        return os.path.join(self.queue_dir, name)

    # -- the format version ------------------------------------------------------
    def read_format(self, owner: bool) -> int:
        """The queue's format version; ``JobQueueError`` for one this jobqueue cannot read.

        The ``owner`` of a new queue writes the current version.
        """
        path = self._path(layout.VERSION_FILE)
        try:
            data = safeio.read_regular_file(path, SMALL_FILE_LIMIT)[0]
            text = data.decode("ascii").strip()
        except FileNotFoundError:
            if owner:
                version = f"{constants.QUEUE_FORMAT_VERSION}\n".encode()
                self._small_files.write(path, version, new=True)
            return constants.QUEUE_FORMAT_VERSION
        except OSError as err:
            raise JobQueueError(
                f"Cannot read the queue format version in {path}: {err.strerror}"
            ) from err
        except UnicodeDecodeError as err:
            raise JobQueueError(f"Cannot read the queue format version in {path}: {err}") from err
        readable = sorted(constants.QUEUE_FORMATS_READ)
        if text not in map(str, readable):
            raise JobQueueError(
                f"Queue format version {text!r} in {path} is not supported (this jobqueue "
                f"reads versions {', '.join(map(str, readable))}); refusing to start"
            )
        return int(text)

    def mark_current_format(self, found: int) -> int:
        """Write the current format version over an older ``found`` one; the current one."""
        current = constants.QUEUE_FORMAT_VERSION
        if found < current:
            version = f"{current}\n".encode()
            self._small_files.write(self._path(layout.VERSION_FILE), version, new=False)
            self._log.info("Queue format version %d marked %d", found, current)
        return current

    # -- the drain flag and named settings ---------------------------------------
    def is_drained(self) -> bool:
        return os.path.exists(self._path(layout.DRAIN_FILE))

    def set_drained(self, drained: bool) -> None:
        path = self._path(layout.DRAIN_FILE)
        exists = os.path.exists(path)
        if drained and not exists:
            self._small_files.write(path, b"", new=True)
        elif not drained and exists:
            try:
                os.unlink(path)
                self._disk.fsync_dir(self.queue_dir)
            except OSError as err:
                with contextlib.suppress(OSError):  # not durably gone: show it again
                    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                    os.close(os.open(path, flags, constants.FILE_MODE))
                raise storage_error(f"Cannot remove {path}", err) from err

    def read_setting(self, name: str) -> str | None:
        check_setting(name)
        path = self._path(layout.setting_file_name(name))
        try:
            with open(path, "rb") as handle:
                data = handle.read(4096)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise storage_error(f"Cannot read {path}", err) from err
        return data.decode("utf-8", "replace").strip()

    def write_setting(self, name: str, value: str | None) -> None:
        check_setting(name, value)
        path = self._path(layout.setting_file_name(name))
        old = self.read_setting(name)
        if value is not None:
            self._small_files.write(path, f"{value}\n".encode(), new=old is None)
        elif old is not None:
            try:
                os.unlink(path)
                self._disk.fsync_dir(self.queue_dir)
            except OSError as err:
                with contextlib.suppress(GenericError):  # not durably gone: show it again
                    self._small_files.write(path, f"{old}\n".encode(), new=False)
                raise storage_error(f"Cannot remove {path}", err) from err

    # -- job filter rules --------------------------------------------------------
    def load_filters(self) -> list[dict[str, Any]]:
        directory = self.filters_dir
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise storage_error(f"Cannot list {directory}", err) from err
        rules = []
        for name in names:
            if not layout.is_filter_name(name):
                continue
            try:
                with open(os.path.join(directory, name), "rb") as handle:
                    rule = json.loads(handle.read().decode("utf-8"))
                if not isinstance(rule, dict) or rule.get("uuid") != name:
                    raise ValueError("not a rule stored under its own uuid")
            except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
                self._log.error("Ignoring the filter rule file %s: %s", name, err)
                continue
            rules.append(rule)
        return rules

    def replace_filter(self, rule: dict[str, Any]) -> None:
        directory = self.filters_dir
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, mode=constants.DIR_MODE, exist_ok=True)
                self._disk.fsync_dir(self.queue_dir)
            except OSError as err:
                raise storage_error(f"Cannot create {directory}", err) from err
        path = os.path.join(directory, rule["uuid"])
        data = json.dumps(rule, separators=(",", ":")).encode("utf-8") + b"\n"
        self._small_files.write(path, data, new=not os.path.exists(path))

    def delete_filter(self, uuid: str) -> bool:
        directory = self.filters_dir
        try:
            os.unlink(os.path.join(directory, uuid))
        except FileNotFoundError:
            return False
        except OSError as err:
            raise storage_error(f"Cannot delete the filter rule {uuid}", err) from err
        try:
            self._disk.fsync_dir(directory)
        except OSError as err:
            raise storage_error(f"Cannot sync {directory}", err) from err
        return True
