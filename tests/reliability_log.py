"""What the reliability suite saw, written to docs/reliability.md at the end of a test session.

Every test that calls :func:`record` carries ``@pytest.mark.reliability``. The report is rewritten only by a
session that ran the whole suite with nothing deselected and in which every reliability case passed
(:func:`blockers`); any partial run (one file, ``-k``, ``-m "not slow"``, a failure) leaves it untouched.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

#: One row per case: area, case, what happened, the test that recorded it, and counts (bad_inputs_tried,
#: crashes_survived, hostile_files_refused, videos_lost).
RECORDS: list[dict] = []

#: The marker every test that calls record() carries (registered in pyproject.toml).
MARKER = "reliability"

REPORT = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def record(area: str, case: str, outcome: str, **counts: int) -> None:
    """Add one case to the report (call it from a test marked ``@pytest.mark.reliability``)."""
    node = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]  # "tests/x.py::test_y (call)"
    RECORDS.append({"area": area, "case": case, "outcome": outcome, "node": node, **counts})


def blockers(whole_suite: bool, deselected: int, marked: set[str], passed: set[str]) -> list[str]:
    """Why this session must leave the report untouched; empty when it may rewrite it.

    ``whole_suite``: every test file was collected and no single test was named; ``deselected``: items left
    out by -k, -m or --deselect; ``marked``: node ids of every collected reliability case; ``passed``: node ids
    of the tests that passed (setup, call and teardown).
    """
    reasons = []
    if not whole_suite:
        reasons.append("only part of the suite was collected")
    if deselected:
        reasons.append(f"{deselected} tests deselected (-k, -m or --deselect)")
    if not marked:
        reasons.append(f"no test marked {MARKER} was collected")
    recorders = {row["node"] for row in RECORDS}
    missing = sorted((marked | recorders) - passed)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        reasons.append(f"{len(missing)} reliability cases did not run and pass ({shown})")
    return reasons


def unmarked_recorders(marked: set[str]) -> list[str]:
    """Tests that called record() without carrying the reliability marker (a partial run could miss them)."""
    return sorted({row["node"] for row in RECORDS} - marked)


def write_report(path: Path = REPORT) -> None:
    """Rewrite docs/reliability.md from RECORDS (called when the session ends)."""
    totals: dict[str, int] = {}
    for row in RECORDS:
        for key, value in row.items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
    lines = [
        "# Reliability",
        "",
        "Written by the reliability cases of `make reliability` (tests/reliability_log.py), only by a run of the",
        "whole suite in which every one of them passed; do not edit by hand.",
        f"Last written {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} on {platform.node()}.",
        "",
        "| totals | |",
        "|---|---|",
        *(f"| {key.replace('_', ' ')} | {value} |" for key, value in sorted(totals.items())),
        "",
        "| area | case | what happened |",
        "|---|---|---|",
        *(f"| {row['area']} | {row['case']} | {row['outcome']} |" for row in RECORDS),
        "",
        "Tests run as root here and in CI: a chmod-0 file stays readable to root, so the permission-denied",
        "path of the decoder is exercised only when the suite runs as another user.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
