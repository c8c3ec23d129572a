"""``make typecheck``: pyright over the package, tests and benches, held to a baseline that may only go down.

Fails when any import is unresolved (every glimpse import must resolve to glimpse/) or when pyright reports more
errors than ``.ci/pyright-baseline.json`` records; ``--update`` writes a lower count back to the baseline.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / ".ci" / "pyright-baseline.json"


def main(argv: list[str]) -> int:
    pyright = Path(sys.executable).with_name("pyright")
    result = subprocess.run([str(pyright), "--outputjson"], cwd=REPO, capture_output=True, text=True)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(f"typecheck: pyright gave no report (exit {result.returncode}): {result.stderr.strip()[-500:]}")
        return 1
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    unresolved = [d for d in errors if d.get("rule") in ("reportMissingImports", "reportMissingModuleSource")]
    by_file = collections.Counter(str(Path(d["file"]).relative_to(REPO)) for d in errors)
    baseline = json.loads(BASELINE.read_text())["errors"]
    for name, count in by_file.most_common(10):
        print(f"  {count:4d}  {name}")
    print(f"typecheck: {len(errors)} errors in {report['summary']['filesAnalyzed']} files "
          f"(baseline {baseline}), {len(unresolved)} unresolved imports")
    for d in unresolved:
        print(f"  unresolved: {Path(d['file']).relative_to(REPO)}:{d['range']['start']['line'] + 1}: {d['message']}")
    if unresolved:
        return 1
    if len(errors) > baseline:
        print(f"typecheck: {len(errors) - baseline} more errors than the baseline: `pyright` lists them")
        return 1
    if "--update" in argv and len(errors) < baseline:
        BASELINE.write_text(json.dumps({"errors": len(errors)}) + "\n")
        print(f"typecheck: baseline lowered to {len(errors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
