"""Run every benchmark script in bench/, one after the other (`make bench` calls this).

    python bench/run_all.py            # full runs (can take an hour on 2 busy cores)
    python bench/run_all.py --quick    # each script's smoke run, where it has one
    python bench/run_all.py throughput compare_methods

A benchmark is any `bench/*.py` except this file and modules whose name starts with `_`
(shared code). They run sequentially, never in parallel: concurrent benchmarks would measure
each other. Each writes its own bench/results/<name>.json (and usually .md); this script prints
which ones ran, how long they took, and whether they failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def discover() -> list[Path]:
    """The benchmark scripts, in name order."""
    return sorted(
        p for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py"
    )


def supports_quick(script: Path) -> bool:
    return '"--quick"' in script.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only these (file names without .py)")
    parser.add_argument("--quick", action="store_true", help="pass --quick where supported")
    args = parser.parse_args(argv)
    scripts = discover()
    if args.names:
        known = {p.stem: p for p in scripts}
        missing = [n for n in args.names if n not in known]
        if missing:
            parser.error(f"no benchmark named {missing}; have {', '.join(known)}")
        scripts = [known[n] for n in args.names]
    outcomes = []
    for script in scripts:
        cmd = [sys.executable, str(script)]
        if args.quick and supports_quick(script):
            cmd.append("--quick")
        print(f"\n=== {script.name} {' '.join(cmd[2:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd, cwd=BENCH_DIR.parent)
        outcomes.append((script.name, code, time.perf_counter() - start))
    print("\n| benchmark | exit | minutes |\n|---|---|---|")
    for name, code, seconds in outcomes:
        print(f"| {name} | {code} | {seconds / 60:.1f} |")
    return 0 if all(code == 0 for _, code, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
