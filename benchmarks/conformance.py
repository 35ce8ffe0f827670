"""The conformance suites' counts on the results page: tests/conformance run by pytest, counted per file.

    python benchmarks/conformance.py

Each file adapts a peer's own test suite (written here, after what those tests assert) and runs it against the
project's envs and agents; the page lists, per file, the peer suite it follows and the passed, failed and
skipped counts of this run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import report

ROOT = Path(__file__).resolve().parent.parent
FOLLOWS = {
    "test_gymnasium_vector": "Gymnasium tests/vector (vector-env API, seeding, autoreset, wrappers)",
    "test_sb3_vec_env": "SB3 test_vec_envs, test_vec_normalize, env_checker (VecEnv API, wrappers, SB3 on the adapter)",
    "test_sb3_algorithms": "SB3 test_predict, test_save_load, test_callbacks (the agents)",
}


def count(junit: Path) -> dict[str, Counter[str]]:
    """Outcomes per test file from a JUnit XML report."""
    per_file: dict[str, Counter[str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        per_file.setdefault(module, Counter())[outcome] += 1
    return per_file


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "conformance.xml"
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                str(ROOT / "tests" / "conformance"), f"--junitxml={junit}"], cwd=ROOT)
        per_file = count(junit)
    rows = [[name, FOLLOWS.get(name, ""), c["passed"], c["failed"], c["skipped"]]
            for name, c in sorted(per_file.items())]
    total = sum(per_file.values(), Counter())
    rows.append(["all", "", total["passed"], total["failed"], total["skipped"]])
    for row in rows:
        print(" | ".join(str(cell) for cell in row))
    report.save(
        "envs_conformance", package="envs",
        title="Conformance: the peers' own test suites, adapted, against the envs and agents",
        protocol="pytest on tests/conformance, counted per file from its JUnit report. Each file follows what a "
        "peer's own suite asserts (Gymnasium's vector-env tests; stable-baselines3's VecEnv, VecNormalize, "
        "env-checker, predict, save/load and callback tests) and runs it against rlopt.envs and rlopt.agents. "
        "The deliberate differences from Gymnasium and SB3 are listed in README's 'Differences from Gymnasium "
        "and stable-baselines3' and asserted in the suite.",
        columns=["file", "follows", "passed", "failed", "skipped"],
        rows=rows,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
