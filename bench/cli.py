"""The command line: `python -m bench [--quick] [options]`.

Exit status: 0 when every scenario measured, 1 when one or more failed
(the others are still reported), 2 for bad options or a missing
prerequisite, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType

from bench import runner
from bench.metrics import MIB
from bench.settings import FULL, QUICK, SCENARIOS, Settings
from bench.workspace import DEFAULT_PARENT, WorkspaceError

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPOSITORY / "bench" / "results"
DEFAULT_DOCS = REPOSITORY / "docs" / "benchmarks.md"
REQUIRED_PROGRAMS = ("sftp", "ssh-keygen", "useradd", "usermod")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark sftpjail against OpenSSH's internal-sftp on loopback.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, for development and CI"
    )
    parser.add_argument("--runs", type=int, help="runs per server and measure")
    parser.add_argument("--big-mib", type=int, help="single-stream file size, MiB")
    parser.add_argument("--small-files", type=int, help="files in the small-files run")
    parser.add_argument("--list-entries", type=int, help="entries in the listed dir")
    parser.add_argument("--logins", type=int, help="sequential logins per server")
    parser.add_argument("--concurrent", type=int, help="concurrent sessions")
    parser.add_argument("--concurrent-mib", type=int, help="MiB each moves")
    parser.add_argument("--idle", type=int, help="idle sessions held open")
    parser.add_argument(
        "--only",
        help=f"comma-separated scenarios to run, of: {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--time-limit", type=float, help="minutes before the run gives up"
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help=f"rewrite the results block of {DEFAULT_DOCS.relative_to(REPOSITORY)}",
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=DEFAULT_PARENT,
        help="root-owned directory for the run's files (not below /tmp)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's files for inspection"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="RESULTS",
        help="measure nothing: redo the Markdown, chart and docs of a results file",
    )
    parser.add_argument(
        "--sftpjail-revision",
        metavar="REV",
        help="run sftpjail from this commit's src/ (default: the working tree)",
    )
    parser.add_argument(
        "--sftpjail-source",
        type=Path,
        metavar="DIR",
        help="run sftpjail from DIR/sftpjail, e.g. a patched copy of src/",
    )
    return parser.parse_args(argv)


def settings_from(arguments: argparse.Namespace) -> Settings:
    """The preset the options name, with every explicit size applied."""

    settings = QUICK if arguments.quick else FULL
    sizes = {
        "runs": arguments.runs,
        "big_size": _mib(arguments.big_mib),
        "small_files": arguments.small_files,
        "list_entries": arguments.list_entries,
        "logins": arguments.logins,
        "concurrent_sessions": arguments.concurrent,
        "concurrent_size": _mib(arguments.concurrent_mib),
        "idle_sessions": arguments.idle,
        "time_limit": _minutes(arguments.time_limit),
    }
    settings = replace(settings, **{k: v for k, v in sizes.items() if v is not None})
    if arguments.only:
        chosen = tuple(name.strip() for name in arguments.only.split(","))
        unknown = [name for name in chosen if name not in SCENARIOS]
        if unknown:
            raise SystemExit(
                f"unknown scenario {', '.join(unknown)}; choose from "
                f"{', '.join(SCENARIOS)}"
            )
        settings = replace(settings, scenarios=chosen)
    return settings


def _mib(value: int | None) -> int | None:
    return None if value is None else value * MIB


def _minutes(value: float | None) -> float | None:
    return None if value is None else value * 60


def check_prerequisites() -> str | None:
    """Say what is missing to run the benchmark, or None."""

    if os.geteuid() != 0:
        return "run it as root: it starts sshd and creates system users"
    missing = [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None]
    if missing:
        names = ", ".join(missing)
        return f"missing programs: {names}; install openssh-client and passwd"
    return None


def _render_only(arguments: argparse.Namespace) -> None:
    results: Path = arguments.from_json
    document = json.loads(results.read_text())
    output = runner.Output(
        results_dir=results.parent,
        chart=not arguments.no_chart,
        docs=DEFAULT_DOCS if arguments.update_docs else None,
    )
    runner.write_outputs(document, output, stem=results.stem)


def stop_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so servers and files are cleaned up."""

    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and exit with its status."""

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bench %(message)s", stream=sys.stderr
    )
    arguments = parse_arguments(argv)
    settings = settings_from(arguments)
    if arguments.from_json is not None:
        _render_only(arguments)
        return
    problem = check_prerequisites()
    if problem is not None:
        print(f"bench: {problem}", file=sys.stderr)
        sys.exit(2)

    stop_on_sigterm()
    output = runner.Output(
        results_dir=arguments.results_dir,
        chart=not arguments.no_chart,
        docs=DEFAULT_DOCS if arguments.update_docs else None,
        keep_workspace=arguments.keep,
        workspace_parent=arguments.workspace,
        sftpjail_revision=arguments.sftpjail_revision,
        sftpjail_source=arguments.sftpjail_source,
    )
    try:
        document = runner.run(settings, output)
    except WorkspaceError as error:
        print(f"bench: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped, files removed", file=sys.stderr)
        sys.exit(130)
    sys.exit(1 if document["errors"] else 0)
