"""One benchmark run from start to end: set up, measure, report, clean up.

Cleanup is the part that must never be skipped: the servers and every
sftp client are stopped and the run's directory removed whether the run
ends normally, fails, or is interrupted (Ctrl-C, or SIGTERM, which the
command line turns into the same KeyboardInterrupt).  A scenario that
fails is recorded as an error and the others still run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import machine, report, sessions, transfers, trees
from bench.client import ClientError, log_in_once
from bench.context import LOGIN_TIMEOUT, BenchError, Context, logger
from bench.jailserver import SftpjailServer, describe_revision, export_revision
from bench.metrics import Metric
from bench.openssh import OpenSSHServer
from bench.servers import BenchServer, ServerError
from bench.settings import Settings
from bench.workspace import DEFAULT_PARENT, Workspace

Scenario = Callable[[Context], list[Metric]]

SCENARIO_FUNCTIONS: dict[str, Scenario] = {
    "logins": sessions.logins,
    "small-files": trees.small_files,
    "listing": trees.listing,
    "transfers": transfers.single_stream,
    "concurrent": transfers.concurrent,
    "idle": sessions.idle,
}


@dataclass(frozen=True)
class Output:
    """Where a run writes its results."""

    results_dir: Path
    chart: bool = True
    docs: Path | None = None
    keep_workspace: bool = False
    workspace_parent: Path = DEFAULT_PARENT
    sftpjail_revision: str | None = None
    sftpjail_source: Path | None = None


def run(settings: Settings, output: Output) -> dict[str, Any]:
    """Measure both servers; write and return the results document."""

    description = machine.describe()
    description["sftpjail"] = (
        f"{output.sftpjail_source} (a source tree)"
        if output.sftpjail_source is not None
        else describe_revision(output.sftpjail_revision)
    )
    workspace = Workspace(output.workspace_parent)
    servers: list[BenchServer] = []
    try:
        source = output.sftpjail_source
        if output.sftpjail_revision is not None:
            source = export_revision(
                output.sftpjail_revision, workspace.root / "snapshot"
            )
        servers = [
            OpenSSHServer(workspace.server_root("openssh")),
            SftpjailServer(workspace.server_root("sftpjail"), source),
        ]
        for server in servers:
            server.prepare(workspace.public_key)
            server.start()
            logger.info("Started %s on port %d.", server.name, server.port)
        context = Context(settings, workspace, servers)
        for server in servers:
            # sftpjail's zygote may still be importing when the supervisor
            # says it is ready; no scenario should time that.
            log_in_once(context.target(server), LOGIN_TIMEOUT)
        metrics, errors = _run_scenarios(context)
    finally:
        for server in servers:
            server.stop()
        if output.keep_workspace:
            logger.info("Kept the run's files in %s.", workspace.root)
        else:
            workspace.cleanup()

    document = report.results_document(
        description, settings.describe(), metrics, errors
    )
    write_outputs(document, output)
    return document


def _run_scenarios(context: Context) -> tuple[list[Metric], dict[str, str]]:
    metrics: list[Metric] = []
    errors: dict[str, str] = {}
    for name in context.settings.scenarios:
        logger.info("Scenario %s.", name)
        started = time.monotonic()
        try:
            metrics += SCENARIO_FUNCTIONS[name](context)
        except (BenchError, ClientError, ServerError, OSError) as error:
            logger.error("Scenario %s failed: %s", name, error)
            errors[name] = str(error)
        logger.info("Scenario %s took %.0f s.", name, time.monotonic() - started)
    return metrics, errors


def write_outputs(
    document: dict[str, Any], output: Output, stem: str | None = None
) -> None:
    """JSON (unless it exists), Markdown, chart, and the docs if asked."""

    stamp = stem or time.strftime("%Y%m%d-%H%M%S")
    json_path = output.results_dir / f"{stamp}.json"
    if not json_path.exists():
        report.write_json(document, json_path)
    block = report.markdown(document)
    (output.results_dir / f"{stamp}.md").write_text(block)
    logger.info("Wrote %s.", json_path)

    chart_path = None
    if output.chart:
        candidate = output.results_dir / f"{stamp}.png"
        if report.write_chart(document, candidate):
            chart_path = candidate
        else:
            logger.warning("No chart: matplotlib is missing (pip install -e .[bench]).")
    if output.docs is not None:
        report.update_docs(output.docs, block, chart_path)
        logger.info("Updated %s.", output.docs)
    print(block)
