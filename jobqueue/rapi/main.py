"""jobqueue-rapi: the command line, TLS, the event loop and signals; builds everything else.

SIGTERM and SIGINT stop the daemon (open event streams are ended, requests
in flight get a few seconds); SIGHUP reads the users file again (it is also
read again by itself when it changes).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import ssl
import sys
from collections.abc import Sequence

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from jobqueue import __version__
from jobqueue.constants import WFJC_MAX_TIMEOUT
from jobqueue.paths import StatePaths
from jobqueue.rapi.access import Gate
from jobqueue.rapi.app import build_app
from jobqueue.rapi.connections import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING_OUTPUT,
    DEFAULT_SEND_TIMEOUT,
    Connections,
)
from jobqueue.rapi.master import Master
from jobqueue.rapi.resources import WAIT_TIMEOUT
from jobqueue.rapi.users import UsersFile, UsersFileError

DEFAULT_PORT = 5080
#: Seconds requests in flight get when the daemon stops.
SHUTDOWN_GRACE = 3.0
#: Header lines a request may have (aiohttp allows 128 of up to 8 KiB each).
MAX_HEADERS = 40
#: Characters of a malformed request's description kept in the log.
MISTAKE_CHARS = 200
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("jobqueue.rapi")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobqueue-rapi",
        description="Ganeti's remote API for jobs and filters, Prometheus metrics and a live "
        "dashboard, over HTTPS, for the jobqueue master daemon (reached over LUXI).",
    )
    add = parser.add_argument
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the master's state directory; its run/master.sock is used (default: "
        "$JOBQUEUE_STATE_DIR, else /var/lib/jobqueue for root, else $XDG_STATE_HOME/jobqueue)",
    )
    where.add_argument("--socket", metavar="PATH", help="the master's LUXI socket")
    add("--bind", metavar="ADDRESS", default="0.0.0.0", help="address to listen on (%(default)s)")
    add(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port (default: %(default)s; 0 picks a free one, which the log names)",
    )
    add(
        "--users-file",
        metavar="FILE",
        required=True,
        help="users, passwords and rights, one 'user password [read|write]' per line "
        "(Ganeti's format; read again when it changes)",
    )
    add("--ssl-cert", metavar="FILE", help="TLS certificate (PEM; may hold the chain)")
    add("--ssl-key", metavar="FILE", help="TLS private key (PEM)")
    add("--no-ssl", action="store_true", help="plain HTTP, for local use only")
    add(
        "--allow-anonymous-read",
        action="store_true",
        help="let requests without credentials read (Ganeti's default); writes always need a user",
    )
    add(
        "--threads",
        type=int,
        default=16,
        help="concurrent calls to the master (default: %(default)s)",
    )
    add(
        "--dashboard-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often open dashboards ask the master for news (default: %(default)s)",
    )
    add(
        "--wait-timeout",
        type=float,
        default=WAIT_TIMEOUT,
        metavar="SECONDS",
        help="how long GET /2/jobs/[id]/wait waits for a change (default: %(default)s)",
    )
    add(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections served at once; more are refused at once (default: %(default)s)",
    )
    add(
        "--client-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close a connection with no request in progress for this long, and refuse a "
        "request body not received in this time (default: %(default)s)",
    )
    add(
        "--send-timeout",
        type=float,
        default=DEFAULT_SEND_TIMEOUT,
        metavar="SECONDS",
        help="close a connection whose client takes nothing of its answer for this long "
        "(default: %(default)s)",
    )
    add(
        "--max-pending-output",
        type=int,
        default=DEFAULT_MAX_PENDING_OUTPUT,
        metavar="BYTES",
        help="answers held for clients that have not taken them, all together; past it the "
        "longest stalled connections are closed (default: %(default)s)",
    )
    add("--debug", action="store_true", help="log debug messages")
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context: TLS 1.2 or later, the certificate chain and key loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.no_ssl and not (args.ssl_cert and args.ssl_key):
        parser.error("--ssl-cert and --ssl-key are needed (or --no-ssl for local use)")
    if args.threads < 2:
        parser.error("--threads must be at least 2")
    if args.max_connections < 1 or args.max_pending_output < 1:
        parser.error("--max-connections and --max-pending-output must be at least 1")
    if not (args.client_timeout > 0 and args.send_timeout > 0):
        parser.error("--client-timeout and --send-timeout must be positive")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format=LOG_FORMAT, stream=sys.stderr
    )
    logging.getLogger("aiohttp.server").addFilter(_quiet_client_mistakes)
    try:
        context = None if args.no_ssl else tls_context(args.ssl_cert, args.ssl_key)
        users = UsersFile(args.users_file, logger=log)
    except (OSError, ssl.SSLError, UsersFileError) as err:
        sys.stderr.write(f"jobqueue-rapi: {err}\n")
        return 1
    if args.no_ssl and not _is_loopback(args.bind):
        log.warning("Serving plain HTTP on %s: passwords cross the network in clear", args.bind)
    socket_path = args.socket or StatePaths.resolve(args.state_dir).master_socket
    try:
        asyncio.run(_serve(args, socket_path, users, context))
    except OSError as err:
        sys.stderr.write(f"jobqueue-rapi: cannot listen on {args.bind}:{args.port}: {err}\n")
        return 1
    return 0


async def _serve(
    args: argparse.Namespace, socket_path: str, users: UsersFile, context: ssl.SSLContext | None
) -> None:
    master = Master(socket_path, threads=args.threads)
    gate = Gate(users, anonymous_read=args.allow_anonymous_read, logger=log)
    connections = Connections(
        context,
        max_connections=args.max_connections,
        idle_timeout=args.client_timeout,
        send_timeout=args.send_timeout,
        max_pending_output=args.max_pending_output,
        logger=log,
    )
    app = build_app(
        master,
        gate,
        connections=connections,
        dashboard_interval=args.dashboard_interval,
        wait_timeout=min(max(args.wait_timeout, 0.0), WFJC_MAX_TIMEOUT),
        logger=log,
    )
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("jobqueue.rapi.access"),
        shutdown_timeout=SHUTDOWN_GRACE,
        handler_cancellation=True,  # a client that hangs up ends its request
        keepalive_timeout=args.client_timeout,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()
    assert runner.server is not None  # set up
    loop = asyncio.get_running_loop()
    try:  # TLS is started by ``connections`` on each accepted connection
        server = await loop.create_server(
            connections.protocol_factory(runner.server), args.bind, args.port, reuse_address=True
        )
    except OSError:
        await runner.cleanup()
        raise
    watcher = loop.create_task(connections.watch())
    scheme = "http" if context is None else "https"
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("jobqueue-rapi %s listening on %s://%s:%d/", __version__, scheme, shown, port)
    log.info("Master socket: %s; %d users", socket_path, users.count())
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, users.reload)
    await stop.wait()
    log.info("Stopping")
    server.close()
    watcher.cancel()
    await runner.cleanup()
    log.info("jobqueue-rapi stopped")


def _quiet_client_mistakes(record: logging.LogRecord) -> bool:
    """aiohttp logs a request it cannot parse with a traceback, a dozen lines for a
    few bytes sent: a client's mistake, which the access log shows as a 400 already.
    It is kept as one line at debug level."""
    error = record.exc_info[1] if record.exc_info else None
    if not isinstance(error, HttpProcessingError):
        return True
    what = " ".join(str(error).split())[:MISTAKE_CHARS]
    record.msg, record.args = "%s: %s", (record.getMessage(), what)
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    record.exc_info, record.exc_text = None, None
    return log.isEnabledFor(logging.DEBUG)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


if __name__ == "__main__":
    sys.exit(main())
