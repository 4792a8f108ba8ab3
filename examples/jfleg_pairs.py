"""JFLEG as preference pairs: chosen = a human correction, rejected = the uncorrected source.

    python examples/jfleg_pairs.py ../shared/data/jfleg/dev/dev runs/jfleg/dev.pairs.jsonl
    python examples/jfleg_pairs.py ../shared/data/jfleg/test/test runs/jfleg/test.pairs.jsonl

Reads the line-aligned X.src and X.ref0..3 files. The chosen side is the first correction that
differs from the source; a sentence all four annotators left unchanged has no pair and is skipped
(the count is printed), since a pair whose two sides are equal teaches nothing (and tunesmith
refuses it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pairs(stem: Path) -> tuple[list[dict], int]:
    """(pair records, sources skipped because every reference equals them)."""
    sources = stem.with_name(stem.name + ".src").read_text(encoding="utf-8").splitlines()
    refs = [
        stem.with_name(f"{stem.name}.ref{k}").read_text(encoding="utf-8").splitlines()
        for k in range(4)
        if stem.with_name(f"{stem.name}.ref{k}").exists()
    ]
    out, skipped = [], 0
    for i, source in enumerate(sources):
        source = source.strip()
        chosen = next((r[i].strip() for r in refs if r[i].strip() != source), None)
        if chosen is None:
            skipped += 1
            continue
        out.append({"prompt": source, "chosen": chosen, "rejected": source})
    return out, skipped


def main(stem: str, out: str) -> None:
    records, skipped = pairs(Path(stem))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    print(f"{out}: {len(records)} pairs ({skipped} sources without a differing correction)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
