"""Entry point: ``python -m bench.run --quick|--full [--only SECTION,...]``.

Installs the peers (``bench/setup_peers.sh``) unless told not to, runs the
chosen sections in order in this one process tree, prints one aligned table
and writes ``bench/results.json``. A section that fails or cannot run becomes
a "skipped: <reason>" row; the sections after it still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bench import controls, disk, fsinfo, ha, jobqueue_sections, peers, scale
from bench.common import (
    BENCH_DIR,
    WORK_ROOT,
    Context,
    Row,
    Settings,
    cpu_count,
    format_number,
    skipped,
)
from bench.daemon import DaemonUnavailable

Section = Callable[[Context], Iterator[Row]]

#: Name on the command line -> (table label, function); run in this order.
SECTIONS: dict[str, tuple[str, Section]] = {
    "disk": (disk.SECTION, disk.run),
    "submit": (jobqueue_sections.SUBMIT, jobqueue_sections.run_submit),
    "peers": (peers.SECTION, peers.run),
    "e2e": (jobqueue_sections.E2E, jobqueue_sections.run_e2e),
    "watch": (jobqueue_sections.WATCH, jobqueue_sections.run_watch),
    "scale": (scale.SECTION, scale.run),
    "cli": (jobqueue_sections.CLI, jobqueue_sections.run_cli),
    "controls": (controls.SECTION, controls.run),
    "ha": (ha.SECTION, ha.run),
}
COLUMNS = ("section", "metric", "value", "unit", "compared with", "ratio", "target", "result")
RESULTS_FILE = BENCH_DIR / "results.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; exits with status 2 on an unknown section."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small counts (default)")
    mode.add_argument("--full", action="store_true", help="the issue's counts")
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(SECTIONS))
    parser.add_argument("--no-setup", action="store_true", help="do not run setup_peers.sh")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help="JSON results file")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    args.sections = [name for name in SECTIONS if not names or name in names]
    return args


def setup_peers() -> None:
    """Run the idempotent peer installer; its lines go to stderr."""
    script = BENCH_DIR / "setup_peers.sh"
    try:
        completed = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"bench: setup_peers.sh failed: {error}", file=sys.stderr)
        return
    for line in (completed.stdout + completed.stderr).splitlines():
        if not line.startswith("WARNING: Location"):  # pip's noise about local mirrors
            print(f"bench: {line}", file=sys.stderr)


def raise_open_file_limit() -> None:
    """Let this process (and the daemon it starts) hold hundreds of client sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run_section(name: str, ctx: Context) -> list[Row]:
    """Run one section; turn an exception into a "skipped" row after the rows so far."""
    label, section = SECTIONS[name]
    rows: list[Row] = []
    began = time.perf_counter()
    print(f"bench: {name} ({label}) ...", file=sys.stderr, flush=True)
    try:
        for row in section(ctx):
            rows.append(row)
            print(f"bench:   {describe(row)}", file=sys.stderr, flush=True)
    except DaemonUnavailable as error:
        rows.append(skipped(label, f"daemon not available ({error})"))
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        rows.append(skipped(label, f"failed ({type(error).__name__}: {error})"))
    print(f"bench: {name} took {time.perf_counter() - began:.1f} s", file=sys.stderr)
    return rows


def describe(row: Row) -> str:
    """One-line progress text for a row."""
    if row.skipped is not None:
        return f"{row.metric or row.section}: skipped: {row.skipped}"
    value = "-" if row.value is None else format_number(row.value)
    return f"{row.metric}: {value} {row.unit}".rstrip()


def table_cells(row: Row) -> list[str]:
    """The row's cells in column order; a skipped row keeps only section and metric."""
    if row.skipped is not None:
        return [row.section, row.metric]
    return [
        row.section,
        row.metric,
        "-" if row.value is None else format_number(row.value),
        row.unit,
        row.compared_with,
        "-" if row.ratio is None else f"{row.ratio:.2f}x",
        row.target or "-",
        row.verdict,
    ]


def format_table(rows: Sequence[Row]) -> str:
    """Return the aligned table; skipped rows print their reason across the value columns."""
    cells = [table_cells(row) for row in rows]
    widths = [len(name) for name in COLUMNS]
    for line in cells:
        if len(line) == len(COLUMNS):
            widths = [max(width, len(cell)) for width, cell in zip(widths, line, strict=True)]
        else:
            widths[0] = max(widths[0], len(line[0]))
    right_aligned = {2, 5}

    def render(line: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right_aligned else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        return "  ".join(parts).rstrip()

    out = [render(COLUMNS), render(["-" * width for width in widths])]
    for row, line in zip(rows, cells, strict=True):
        if row.skipped is None:
            out.append(render(line))
        else:
            head = line[0].ljust(widths[0])
            metric = f"{line[1]}: " if line[1] else ""
            out.append(f"{head}  {metric}skipped: {row.skipped}")
    return "\n".join(out)


def write_results(path: Path, settings: Settings, rows: Sequence[Row], seconds: float) -> None:
    """Write the machine description and every row as JSON."""
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": settings.mode,
        "duration_s": round(seconds, 1),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": cpu_count(),
            "file_system": file_system(),
        },
        "python": platform.python_version(),
        "settings": dataclasses.asdict(settings),
        "rows": [row.to_dict() for row in rows],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")


def file_system() -> str:
    """The file system of the scratch directories (where every queue of the run lives)."""
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    return fsinfo.describe(WORK_ROOT)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0 even when targets are missed or sections skipped."""
    args = parse_args(argv)
    settings = Settings.full() if args.full else Settings.quick()
    raise_open_file_limit()
    began = time.perf_counter()
    if "peers" in args.sections and not args.no_setup:
        setup_peers()
    ctx = Context(settings=settings)
    rows: list[Row] = []
    for name in args.sections:
        rows.extend(run_section(name, ctx))
    seconds = time.perf_counter() - began
    print()
    print(
        f"jobqueue benchmark, {settings.mode} run: {platform.platform()}, "
        f"{cpu_count()} CPUs, Python {platform.python_version()}, {seconds:.0f} s"
    )
    print(f"scratch file system: {file_system()}")
    print(format_table(rows))
    write_results(args.output, settings, rows, seconds)
    print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
