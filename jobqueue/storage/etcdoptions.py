"""The etcd store's settings, and the command-line options that give them.

``add_etcd_arguments`` adds ``--store`` and the ``--etcd-*`` options to a
parser (the daemon's and the cleaner's); ``EtcdStoreSettings.from_args``
turns what was parsed into settings, raising ``ValueError`` with a message
for the parser's ``error``. doc/ha.rst lists the options.

This module imports nothing of the etcd client, so building a parser costs
nothing when the file store is used (the client is an optional extra).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from jobqueue.storage.etcdlayout import DEFAULT_MAX_REQUEST_BYTES, Keys

if TYPE_CHECKING:
    from jobqueue.storage.etcdconn import EtcdSettings

#: ``--store`` choices; the file store is the default.
STORE_FILE = "file"
STORE_ETCD = "etcd"
DEFAULT_PREFIX = "/jobqueue/default"
#: Seconds: the master's lease, renewed every third of it.
DEFAULT_LEASE_TTL = 10
#: Seconds: the deadline of every etcd request.
DEFAULT_TIMEOUT = 5.0
#: Seconds of etcd history the daemon keeps when it compacts (0: it does not).
DEFAULT_HISTORY = 300.0


@dataclasses.dataclass(frozen=True)
class EtcdStoreSettings:
    """Everything the etcd store needs: how to reach etcd and how to use it.

    ``connection``: endpoints, deadline, TLS and authentication.
    ``prefix``: where this queue's keys live. ``lease_ttl``: seconds a
    master's leadership outlives its last renewal. ``max_request_bytes``:
    the etcd servers' ``--max-request-bytes``. ``history``: seconds of
    history ``compact_history`` keeps (0: compaction left to etcd's own
    ``--auto-compaction-*`` flags). ``id_block``: job ids reserved per
    serial update. ``page_size``: keys per read when loading.
    """

    connection: EtcdSettings
    prefix: str = DEFAULT_PREFIX
    lease_ttl: int = DEFAULT_LEASE_TTL
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    history: float = DEFAULT_HISTORY
    id_block: int = 1000
    page_size: int = 1000

    def __post_init__(self) -> None:
        Keys(self.prefix)  # raises ValueError for a bad prefix
        if self.lease_ttl < 2:
            raise ValueError("the etcd lease TTL must be at least 2 seconds")
        if self.max_request_bytes < 64 * 1024:
            raise ValueError("--etcd-max-request-bytes below 64 KiB leaves no room for jobs")
        if self.history < 0 or self.id_block < 1 or self.page_size < 1:
            raise ValueError("history, id_block and page_size must be positive")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EtcdStoreSettings:
        """Settings from options added by ``add_etcd_arguments``; ValueError says what is wrong."""
        from jobqueue.storage.etcdconn import EtcdSettings

        if not args.etcd_endpoints:
            raise ValueError("--store etcd needs --etcd-endpoints URL,...")
        password = None
        if args.etcd_password_file:
            password = _read_password(args.etcd_password_file)
        if (args.etcd_user is None) != (password is None):
            raise ValueError("--etcd-user and --etcd-password-file go together")
        connection = EtcdSettings.from_list(
            args.etcd_endpoints,
            timeout=args.etcd_timeout,
            ca_file=args.etcd_ca,
            cert_file=args.etcd_cert,
            key_file=args.etcd_key,
            user=args.etcd_user,
            password=password,
        )
        return cls(
            connection=connection,
            prefix=args.etcd_prefix,
            lease_ttl=args.etcd_lease_ttl,
            max_request_bytes=args.etcd_max_request_bytes,
            history=args.etcd_history,
        )


def _read_password(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read the etcd password from {path}: {err}") from err


def add_etcd_arguments(parser: argparse.ArgumentParser, *, with_store: bool = True) -> None:
    """Add ``--store`` (unless ``with_store`` is False) and the ``--etcd-*`` options."""
    if with_store:
        parser.add_argument(
            "--store",
            choices=(STORE_FILE, STORE_ETCD),
            default=STORE_FILE,
            help="where the job queue is kept: files under the state directory"
            " (default) or etcd (high availability, doc/ha.rst)",
        )
    group = parser.add_argument_group("etcd store (with --store etcd)")
    group.add_argument(
        "--etcd-endpoints",
        metavar="URL,...",
        help="client URLs of the etcd members, e.g. https://etcd1:2379,https://etcd2:2379",
    )
    group.add_argument(
        "--etcd-prefix",
        metavar="PREFIX",
        default=DEFAULT_PREFIX,
        help=f"the key prefix of this queue, one per queue (default {DEFAULT_PREFIX})",
    )
    group.add_argument("--etcd-ca", metavar="FILE", help="CA certificate that signed etcd's")
    group.add_argument("--etcd-cert", metavar="FILE", help="client certificate (with --etcd-key)")
    group.add_argument("--etcd-key", metavar="FILE", help="client certificate's private key")
    group.add_argument("--etcd-user", metavar="NAME", help="etcd user (with --etcd-password-file)")
    group.add_argument(
        "--etcd-password-file",
        metavar="FILE",
        help="file whose first line is the etcd user's password",
    )
    group.add_argument(
        "--etcd-lease-ttl",
        metavar="SECONDS",
        type=int,
        default=DEFAULT_LEASE_TTL,
        help="seconds the master's leadership outlives its last renewal; a standby takes"
        f" over about that long after the master died (default {DEFAULT_LEASE_TTL})",
    )
    group.add_argument(
        "--etcd-timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"deadline of each etcd request (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--etcd-max-request-bytes",
        metavar="BYTES",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="the etcd servers' --max-request-bytes; bounds the size of a stored job"
        f" (default {DEFAULT_MAX_REQUEST_BYTES})",
    )
    group.add_argument(
        "--etcd-history",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_HISTORY,
        help="seconds of etcd history the master keeps when it compacts; 0 leaves"
        f" compaction to etcd's --auto-compaction-retention (default {DEFAULT_HISTORY:g})",
    )
