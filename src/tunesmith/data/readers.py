"""How each file form becomes records, streamed: the readers behind `data.sources`.

Lines are streamed through `datasets` (its `text` builder; parquet through its `parquet` builder;
zip members as `zip://` URLs, never extracted) in chunks of STREAM_CHUNK_BYTES, so reading a file
takes memory in proportion to a chunk, not to the file. Files under one chunk are read by Python
in one piece with the same results: `datasets` would read them in one chunk too, after ~7 ms of
setup. Records are parsed here, line by line, with Python's json and csv modules: values stay
exactly as written (no column type inference, no nulls filled in) and every error names its
file:line.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from tunesmith.errors import UserError


@dataclass
class DataFile:
    """A data file on disk or inside a zip.

    `label` names it in messages; `url` is what `datasets` opens (a local path, or
    `zip://<member>::<archive>`); `open_binary` opens the same bytes for hashing and for locating
    an error. `partners` are the X.ref0..N files read alongside an X.src file.
    """

    label: str
    suffix: str
    url: str
    open_binary: Callable[[], BinaryIO]
    partners: tuple[DataFile, ...] = ()
    size: int = 0  # bytes

    def read_bytes(self) -> bytes:
        """The whole file (only for forms that cannot stream: a JSON array)."""
        with self.open_binary() as stream:
            return stream.read()


def read_file(file: DataFile) -> Iterator[dict[str, Any]]:
    """Records of one file, by its suffix, streamed."""
    reader = READERS.get(file.suffix, _read_json)
    return reader(file)


# How much `datasets` reads at a time: memory while reading a file stays O(chunk), not O(file).
STREAM_CHUNK_BYTES = 1 << 20
STREAM_BATCH_ROWS = 1024
# Files smaller than one chunk are read by Python in one piece: `datasets` would read them in one
# chunk too, after ~7 ms of setup per file (200 small files: 1.3 s instead of 0.01 s).
STREAM_MIN_BYTES = STREAM_CHUNK_BYTES


def datasets_module() -> Any:
    """The `datasets` package, imported on first use (it is slow to import)."""
    import datasets

    return datasets


def brief(exc: BaseException) -> str:
    """An exception's message on one line, shortened."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def streams(file: DataFile) -> bool:
    """Whether `file` is read through `datasets`: one chunk or larger, and a name `datasets` will
    not take for a glob pattern."""
    return file.size >= STREAM_MIN_BYTES and not glob.has_magic(file.url)


def line_stream(file: DataFile) -> Any:
    """A `datasets.IterableDataset` of the file's lines, line breaks kept (column "text"), read
    lazily in chunks of STREAM_CHUNK_BYTES: the source of the line-based readers here."""
    return _stream(file, "text")


def _stream(file: DataFile, builder: str) -> Any:
    """A streaming `load_dataset` of one file (lazy: the file is opened while iterating)."""
    datasets = datasets_module()
    options = {}
    if builder == "text":
        options = {
            "encoding": "utf-8-sig",
            "chunksize": STREAM_CHUNK_BYTES,
            "keep_linebreaks": True,
        }
    # load_dataset pings the hub to count uses of its packaged builders: local files need no
    # network, and where it is blocked every ping waits for its timeout.
    counting = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        return datasets.load_dataset(
            builder, data_files=[file.url], split="train", streaming=True, **options
        )
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counting


def _lines(file: DataFile, keep_linebreaks: bool = False) -> Iterator[str]:
    """The file's lines in order (universal newlines, a leading UTF-8 BOM dropped): streamed in
    chunks by `datasets`' text builder, or read by Python when the file is under one chunk.
    Line k of the file is the k-th item.

    Raises:
        UserError: file:line of the first byte that is not UTF-8; any other read failure.
    """
    try:
        if not streams(file):
            with io.TextIOWrapper(file.open_binary(), encoding="utf-8-sig") as text:
                yield from (line if keep_linebreaks else line.rstrip("\n") for line in text)
            return
        batches = line_stream(file).with_format("arrow").iter(batch_size=STREAM_BATCH_ROWS)
        for batch in batches:
            lines = batch.column(0).to_pylist()
            yield from (lines if keep_linebreaks else (line.rstrip("\n") for line in lines))
    except UnicodeDecodeError:
        raise _not_utf8(file) from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a file that cannot be read is the user's to fix
        raise UserError(f"{file.label}: cannot read ({brief(exc)})") from None


def _not_utf8(file: DataFile) -> UserError:
    """Re-scan a file `datasets` could not decode for the line and byte of the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with file.open_binary() as raw:
        while True:
            chunk = raw.read(STREAM_CHUNK_BYTES)
            pending = decoder.getstate()[0]  # an unfinished character carried over
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                data = pending + chunk
                line += data[: exc.start].count(b"\n")
                return UserError(
                    f"{file.label}:{line}: not UTF-8 (byte {offset - len(pending) + exc.start})",
                    "convert the file to UTF-8",
                )
            if not chunk:
                break
            line += chunk.count(b"\n")
            offset += len(chunk)
    return UserError(f"{file.label}: not UTF-8", "convert the file to UTF-8")


def _text(file: DataFile) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(file) from None


_decode_json = json.JSONDecoder().decode  # json.loads without its per-call argument checks


def _starts_with_array(file: DataFile) -> bool:
    with file.open_binary() as raw:
        head = raw.read(4096)
    return head.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"[")


def _read_json(file: DataFile) -> Iterator[dict[str, Any]]:
    """JSON lines, streamed; or (`.json` only) one JSON array, which is read whole."""
    if file.suffix == ".json" and _starts_with_array(file):
        try:
            rows = json.loads(_text(file))
        except json.JSONDecodeError as exc:
            raise UserError(f"{file.label}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        for i, row in enumerate(rows):
            yield _as_record(row, f"{file.label}[{i}]")
        return
    for number, line in enumerate(_lines(file), start=1):
        if not line.strip():
            continue
        try:
            row = _decode_json(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{file.label}:{number}: invalid JSON line: {exc.msg}",
                "each line must be one JSON object",
            ) from None
        yield _as_record(row, f"{file.label}:{number}")


def _read_csv(file: DataFile) -> Iterator[dict[str, Any]]:
    """CSV with a header row; every value a string, as written. `_source` is the line where the
    record ends (a quoted value may span lines)."""
    reader = csv.DictReader(_lines(file, keep_linebreaks=True))
    try:
        for row in reader:
            if None in row:
                raise UserError(
                    f"{file.label}:{reader.line_num}: more values than the header has columns",
                    "quote fields that contain commas",
                )
            yield {**row, "_source": f"{file.label}:{reader.line_num}"}
    except csv.Error as exc:
        raise UserError(f"{file.label}:{reader.line_num}: invalid CSV: {exc}") from None


def _read_parquet(file: DataFile) -> Iterator[dict[str, Any]]:
    """Parquet rows, streamed batch by batch by `datasets`' parquet builder."""
    index = 0
    try:
        if streams(file):
            batches = _stream(file, "parquet").with_format("arrow").iter(STREAM_BATCH_ROWS)
        else:
            import pyarrow.parquet as pq

            batches = [pq.read_table(io.BytesIO(file.read_bytes()))]
        for batch in batches:
            for row in batch.to_pylist():
                yield {**row, "_source": f"{file.label}[{index}]"}
                index += 1
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise UserError(f"{file.label}: not a readable parquet file ({brief(exc)})") from None


def _read_text(file: DataFile) -> Iterator[dict[str, Any]]:
    """Plain text: one record per paragraph (blank-line separated), for continued pre-training."""
    lines: list[str] = []
    start = 1
    for number, line in enumerate(itertools.chain(_lines(file), [""]), start=1):
        if line.strip():
            if not lines:
                start = number
            lines.append(line)
        elif lines:
            yield {"text": "\n".join(lines), "_source": f"{file.label}:{start}"}
            lines = []


def _read_line_aligned(file: DataFile) -> Iterator[dict[str, Any]]:
    """`X.src` with `X.ref0..N` (JFLEG): input, target (= ref0) and all references."""
    streams = [_lines(f) for f in (file, *file.partners)]
    for i, lines in enumerate(itertools.zip_longest(*streams)):
        if None in lines:
            counts = [i + (line is not None) + sum(1 for _ in s) for line, s in zip(lines, streams)]
            short = next(k for k, n in enumerate(counts) if n != counts[0])
            raise UserError(
                f"{file.partners[short - 1].label}: {counts[short]} lines, "
                f"but {file.label} has {counts[0]}",
                "line-aligned files must have the same number of lines",
            )
        source, *refs = (line.strip() for line in lines)
        record = {"input": source, "_source": f"{file.label}:{i + 1}"}
        if refs:
            record.update(target=refs[0], references=refs)
        yield record


READERS: dict[str, Callable[[DataFile], Iterator[dict[str, Any]]]] = {
    ".jsonl": _read_json,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".txt": _read_text,
    ".src": _read_line_aligned,
}


def _as_record(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    row["_source"] = where  # the row was just parsed: nobody else holds it
    return row
