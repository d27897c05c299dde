"""A longer, random fuzz run of the spec and budget fuzzers (issue 12).

CI runs them derandomized (a fixed seed per test, 120 spec and 60 budget documents); this runs
them with fresh random seeds and many more documents, to find new crashes. Every failure it
reports becomes a fixed bug plus a corpus case in tests/bad_inputs/ (hypothesis prints the
failing document and a @reproduce_failure line).

    python benchmarks/fuzz.py [--examples 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=2000, help="spec documents per round "
                    "(budgets get half)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    env = {**os.environ, "CONVCOST_HYPOTHESIS_PROFILE": "fuzz",
           "CONVCOST_FUZZ_EXAMPLES": str(a.examples)}
    failed = 0
    for r in range(a.rounds):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                            "tests/test_bad_inputs.py", "-k", "fuzzed"], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        took = time.perf_counter() - t0
        print(f"round {r + 1}: {a.examples} specs + {a.examples // 2} budgets, "
              f"{'ok' if p.returncode == 0 else 'FAILURES'} in {took:.0f} s", flush=True)
        if p.returncode != 0:
            failed += 1
            print(p.stdout[-6000:])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
