"""Reading a large JSON-lines file: peak memory and seconds, whole-file reader vs `datasets` stream.

    PYTHONPATH=src .venv/bin/python bench/data_sources.py            # 0.5M and 1.5M lines
    PYTHONPATH=src .venv/bin/python bench/data_sources.py --quick    # 50k and 150k lines

Generates JSON lines in a temporary folder (about 200 bytes a line, alpaca-like fields: ~300 MB
at 1.5M lines) and reads them in a fresh process per reader and size:

- `whole file`: the reader tunesmith used before (read all bytes, decode, split lines,
  `json.loads` each), reproduced here for comparison; it returns a list, so it holds every record.
- `datasets stream`: `tunesmith.data.sources.iter_records` (lines streamed by `datasets`' text
  builder in 1 MB chunks, parsed one by one); records are counted and dropped, so this is the
  reader's own memory.
- `datasets list`: `read_records`, the same stream collected into a list (what holding every
  record costs, whatever reads it).

Peak memory is the rise of the process's peak RSS above its RSS after imports and a warm-up read
of a tiny file (Linux VmHWM, reset through /proc/self/clear_refs). Writes
bench/results/data_sources.json (or data_sources_quick.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, load_average, machine, markdown_table, run_isolated  # noqa: E402

READERS = ("whole file", "datasets stream", "datasets list")


def write_jsonl(path: Path, lines: int, seed: int = 0) -> int:
    """`lines` alpaca-like JSON lines; returns the file size in bytes."""
    rng = random.Random(seed)
    words = [
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "was",
        "for",
        "on",
        "that",
        "with",
        "as",
        "by",
        "at",
        "from",
        "his",
        "her",
        "an",
        "be",
    ]
    with open(path, "w", encoding="utf-8") as out:
        for i in range(lines):
            row = {
                "instruction": f"Explain item {i} in a few words.",
                "input": " ".join(rng.choices(words, k=rng.randint(0, 20))),
                "output": " ".join(rng.choices(words, k=rng.randint(10, 30))),
            }
            out.write(json.dumps(row) + "\n")
    return path.stat().st_size


def whole_file_records(path: str) -> list[dict]:
    """The previous reader's algorithm: the whole file in memory, then one record per line."""
    text = Path(path).read_bytes().decode("utf-8")
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            records.append({**json.loads(line), "_source": f"{path}:{number}"})
    return records


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def worker(reader: str, path: str, tmp: str) -> dict:
    """Read `path` with `reader` in this process; seconds and peak RSS rise."""
    from tunesmith.data.sources import iter_records, read_records

    warm = Path(tmp) / "warm.jsonl"
    warm.write_text('{"input": "1", "output": "one"}\n', encoding="utf-8")
    read_records(str(warm))  # imports datasets and its text builder before measuring
    whole_file_records(str(warm))
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    start_rss = _status_bytes("VmRSS")
    started = time.perf_counter()
    if reader == "whole file":
        records = len(whole_file_records(path))
    elif reader == "datasets stream":
        records = sum(1 for _ in iter_records(path))
    else:
        records = len(read_records(path))
    seconds = time.perf_counter() - started
    return {
        "records": records,
        "seconds": seconds,
        "start_rss_mb": start_rss / 1e6,
        "peak_rise_mb": (_status_bytes("VmHWM") - start_rss) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50k and 150k lines")
    parser.add_argument("--lines", type=int, nargs="*", help="file sizes in lines")
    parser.add_argument("--worker", choices=READERS, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(args.worker, args.path, args.tmp)
        Path(args.out).write_text(json.dumps(result), encoding="utf-8")
        return 0

    sizes = args.lines or ([50_000, 150_000] if args.quick else [500_000, 1_500_000])
    rows, table = [], []
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-sources-") as tmp:
        for lines in sizes:
            path = Path(tmp) / f"data_{lines}.jsonl"
            size = write_jsonl(path, lines)
            for reader in READERS:
                load_before = load_average()
                result = run_isolated(
                    Path(__file__), ["--worker", reader, "--path", str(path)], 3600, threads=1
                )
                row = {"lines": lines, "file_mb": size / 1e6, "reader": reader, **result}
                row["load_before_after"] = [load_before, load_average()]
                rows.append(row)
                if "error" in result:
                    table.append([lines, f"{size / 1e6:.0f}", reader, "error", "", "", ""])
                    continue
                table.append(
                    [
                        f"{lines:,}",
                        f"{size / 1e6:.0f}",
                        reader,
                        f"{result['seconds']:.1f}",
                        f"{result['records'] / result['seconds'] / 1e3:.0f}",
                        f"{result['peak_rise_mb']:.0f}",
                        f"{result['peak_rise_mb'] * 1e6 / size:.2f}",
                    ]
                )
            path.unlink()
    headers = ["lines", "file MB", "reader", "seconds", "k records/s", "peak RSS rise MB", "x file"]
    text = markdown_table(headers, table)
    print(text)
    name = "data_sources_quick" if args.quick else "data_sources"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "rows": rows, "table": text}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
