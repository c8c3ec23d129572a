"""What the reliability suite saw, written to docs/reliability.md at the end of a test session."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path

#: One row per case: area, case, what happened, and counts (bad_inputs, crashes, videos_lost, ...).
RECORDS: list[dict] = []

REPORT = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def record(area: str, case: str, outcome: str, **counts: int) -> None:
    """Add one case to the report."""
    RECORDS.append({"area": area, "case": case, "outcome": outcome, **counts})


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
        "Written by the reliability cases of `make test` (tests/reliability_log.py); do not edit by hand.",
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
