"""Build the demo task from the Python standard library: function source -> docstring summary.

    python examples/stdlib_docstrings.py data/stdlib [--max-input-chars 800]

Every Python install carries thousands of documented functions, so the demo needs no download.
For each public function and public method (of a public top-level class) that has a docstring,
in the pure-Python modules of the running interpreter's standard library:

- ``input``  is the function's source with the docstring removed (dedented, decorators kept);
- ``output`` is the first sentence of the docstring, on one line.

Records go to ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` as
``{"input", "output", "module", "name"}``. The split unit is the top-level package (``asyncio``,
``email``, ``json``...; a plain module is its own unit), assigned by a seeded hash, so no module
-- nor a sibling module of the same package -- appears in two splits. Files are walked in sorted
order and every choice is seeded, so the same Python version writes the same bytes everywhere.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import json
import random
import re
import sys
import sysconfig
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

SEED = 0
SPLIT_FRACTIONS = {"test": 0.1, "validation": 0.05}  # the rest is train

# Folders and modules that are not library code (tests, demos, GUI apps, bundled third-party
# code, build data) or that duplicate other modules.
SKIPPED_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "site-packages",
    "dist-packages",
    "lib-dynload",
    "__pycache__",
    "ensurepip",
    "pydoc_data",
    "__phello__",
}
SKIPPED_FILES = {"__hello__.py", "antigravity.py", "this.py", "__main__.py"}

MIN_OUTPUT_CHARS = 20
MAX_OUTPUT_CHARS = 160
MIN_OUTPUT_WORDS = 4
DEFAULT_MAX_INPUT_CHARS = 800  # about 230 SmolLM2 tokens; the demo cuts inputs at 256
MIN_BODY_LINES = 2  # after the docstring is removed; a bare `pass` body teaches nothing

# A period ends a sentence unless it closes one of these abbreviations.
_ABBREVIATIONS = ("e.g", "i.e", "etc", "vs", "cf", "Mr", "Dr", "approx", "resp")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


@dataclass(frozen=True)
class Example:
    input: str
    output: str
    module: str
    name: str


def stdlib_files(stdlib_dir: Path) -> list[Path]:
    """Return the pure-Python standard-library files worth learning from, in sorted order."""
    files = []
    for path in sorted(
        stdlib_dir.rglob("*.py"), key=lambda p: p.relative_to(stdlib_dir).as_posix()
    ):
        rel = path.relative_to(stdlib_dir)
        if any(part in SKIPPED_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if rel.name in SKIPPED_FILES or rel.name.startswith(("test_", "_sysconfigdata")):
            continue
        files.append(path)
    return files


def module_name(stdlib_dir: Path, path: Path) -> str:
    """Dotted module name of a standard-library file (`email/utils.py` -> `email.utils`)."""
    parts = list(path.relative_to(stdlib_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def first_sentence(docstring: str) -> str | None:
    """The docstring's first sentence on one line, or None when it has no clean one.

    Rejects summaries that are signatures (`f(x) -> y`), doctests, lists introduced by a colon,
    and anything outside the length limits.
    """
    paragraph = inspect.cleandoc(docstring).split("\n\n")[0]
    text = " ".join(paragraph.split())
    end = None
    for match in _SENTENCE_END.finditer(text):
        if text[: match.start()].endswith(_ABBREVIATIONS):
            continue
        end = match.end()
        break
    if end is None:
        return None  # no sentence end in the first paragraph: a fragment or a list header
    sentence = text[:end]
    if not sentence.isascii() or ">>>" in sentence or "->" in sentence:
        return None
    if re.match(r"^[\w.]+\(.*\)", sentence):  # an old-style signature line, not a summary
        return None
    if not (MIN_OUTPUT_CHARS <= len(sentence) <= MAX_OUTPUT_CHARS):
        return None
    if len(sentence.split()) < MIN_OUTPUT_WORDS:
        return None
    return sentence


def source_without_docstring(lines: list[str], node: ast.AST) -> str | None:
    """The function's source (decorators included, dedented) with its docstring lines removed.

    Returns None when the docstring shares a line with other code or when too little body is
    left to describe.
    """
    doc_node = node.body[0]
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    if doc_node.lineno == node.lineno or len(node.body) == 1:
        return None
    if node.body[1].lineno <= doc_node.end_lineno:  # `"""doc"""; x = 1` on one line
        return None
    kept = lines[start - 1 : doc_node.lineno - 1] + lines[doc_node.end_lineno : node.end_lineno]
    source = textwrap.dedent("".join(kept)).rstrip() + "\n"
    body_lines = [ln for ln in lines[doc_node.end_lineno : node.end_lineno] if ln.strip()]
    if len(body_lines) < MIN_BODY_LINES:
        return None
    return source


def _documented_functions(tree: ast.Module):
    """Yield (qualified name, node) for public functions and public methods of public classes."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and not node.name.startswith("_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, functions) and not item.name.startswith("_"):
                    yield f"{node.name}.{item.name}", item


def examples_from_file(stdlib_dir: Path, path: Path) -> list[Example]:
    """All usable (source, first sentence) examples of one standard-library file."""
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    try:
        tree = ast.parse(text)
    except SyntaxError:  # a few stdlib files hold deliberately broken code
        return []
    lines = text.splitlines(keepends=True)
    module = module_name(stdlib_dir, path)
    examples = []
    for name, node in _documented_functions(tree):
        docstring = ast.get_docstring(node, clean=False)
        if not docstring:
            continue
        summary = first_sentence(docstring)
        source = source_without_docstring(lines, node) if summary else None
        if source is None:
            continue
        examples.append(Example(input=source, output=summary, module=module, name=name))
    return examples


def split_of_units(sizes: dict[str, int], seed: int = SEED) -> dict[str, str]:
    """Assign each split unit (top-level package) to test, validation or train.

    Args:
        sizes: number of examples per unit.
        seed: changes the order in which units are considered.

    Units are visited in the order of a seeded hash of their name; a unit joins test if test
    stays within its share of all examples, else validation likewise, else train. So the
    held-out splits are a seeded sample of packages, never one giant package by chance.
    """
    total = sum(sizes.values())
    targets = {name: fraction * total for name, fraction in SPLIT_FRACTIONS.items()}
    filled = dict.fromkeys(targets, 0)
    assignment = {}
    for unit in sorted(sizes, key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).hexdigest()):
        split = next((s for s in targets if filled[s] + sizes[unit] <= targets[s]), "train")
        filled[split] = filled.get(split, 0) + sizes[unit]
        assignment[unit] = split
    return assignment


def build(
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS, stdlib_dir: Path | None = None
) -> dict[str, list[Example]]:
    """Build the three splits from the running interpreter's standard library.

    Splits are assigned before the length filter, so `max_input_chars` changes which functions
    are kept but never moves a package to another split.
    """
    stdlib_dir = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    seen_inputs = set()
    examples = []
    for path in stdlib_files(stdlib_dir):
        for example in examples_from_file(stdlib_dir, path):
            if example.input in seen_inputs:  # identical code in two places would leak
                continue
            seen_inputs.add(example.input)
            examples.append(example)

    sizes = Counter(e.module.split(".")[0] for e in examples)
    assignment = split_of_units(dict(sizes))
    splits = {"train": [], "validation": [], "test": []}
    for example in examples:
        if len(example.input) <= max_input_chars:
            splits[assignment[example.module.split(".")[0]]].append(example)
    for name, records in splits.items():
        # Shuffled so that the first N test records sample many modules, not one.
        random.Random(f"{SEED}:{name}").shuffle(records)
    return splits


def write(splits: dict[str, list[Example]], out_dir: Path) -> None:
    """Write `<split>.jsonl` files, one JSON object per line, UTF-8, `\\n` line ends."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in splits.items():
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            f.writelines(
                json.dumps(asdict(record), ensure_ascii=False) + "\n" for record in records
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder for train/validation/test.jsonl")
    parser.add_argument(
        "--max-input-chars",
        type=int,
        default=DEFAULT_MAX_INPUT_CHARS,
        help="drop functions whose source (without docstring) is longer than this",
    )
    args = parser.parse_args(argv)
    splits = build(args.max_input_chars)
    write(splits, args.out_dir)
    version = ".".join(map(str, sys.version_info[:3]))
    counts = ", ".join(f"{name} {len(records)}" for name, records in splits.items())
    modules = {name: len({r.module for r in records}) for name, records in splits.items()}
    print(f"stdlib of Python {version}: {counts} examples; modules per split {modules}")


if __name__ == "__main__":
    main()
