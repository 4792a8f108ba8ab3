"""Tokenised examples -> batches for each rank, with an exact, resumable position.

Order: each epoch is a sequence of training units (examples, or packed rows of examples) computed
from (seed, epoch): the epoch's draw of examples (by proportion when entries set one:
data/mixing.py), then, with packing, that draw packed into rows (data/packing.py). The global
micro-batch k of an epoch takes slots [(k*world + rank)*B, (k*world + rank + 1)*B) on each rank,
so with the same global batch (batch_size x world x grad_accum) one process and many see the same
examples in the same optimizer step. The position is two integers (epoch, micro-batch), so resume
continues at the exact next example without replaying the loader.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import Config
from tunesmith.data.cache import cache_key, cached_splits, default_cache_dir, tokenizer_fingerprint
from tunesmith.data.formats import Example, check_entry, format_record
from tunesmith.data.mixing import mixture_order, normalised
from tunesmith.data.packing import collate_packed, pack, padding_slots
from tunesmith.data.plugins import load_plugins
from tunesmith.data.sources import DatasetEntry, content_fingerprint, dataset_entries, read_entry
from tunesmith.data.tokenize import ENCODING_VERSION, IGNORE, Encoded, Limits, encode_parallel
from tunesmith.errors import UserError

AUTO_PAD_MULTIPLE = 64  # data.pad_to_multiple_of when the model is compiled
GROUP_CHUNK = 64  # micro-batches sorted together by group_by_length (independent of world size)
PACK_BUCKETS = 32  # lengths within 1/32 of a row count as equal when packing (variety per epoch)


@dataclass
class SplitStats:
    """What a split holds and what was cut or dropped to get there (always reported)."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    per_source: dict[str, int] = field(default_factory=dict)  # examples kept, per entry
    per_epoch: dict[str, int] = field(default_factory=dict)  # examples per epoch (mixing)
    rows: int = 0  # packed rows (train with packing)
    packing_efficiency: float | None = None  # real tokens / (rows x max_seq_len)
    mean_len: float = 0.0  # tokens per example as trained (after cutting)
    p95_len: int = 0
    max_len: int = 0
    longest: int = 0  # the longest example before the length cap
    limit: int | None = None  # the length cap applied (see `length_cap`)
    limit_source: str = ""  # which setting set it: cutoff_len, max_seq_len or the model context


def describe_stats(split: str, s: SplitStats) -> str:
    """One log line: examples, truncated, dropped, per entry and per epoch, packing."""
    line = f"{split}: {s.examples} examples ({s.truncated} truncated, {s.dropped} dropped)"
    if s.examples:
        line += f"; tokens mean {s.mean_len:.0f}, p95 {s.p95_len}, max {s.max_len}"
        if s.limit is not None:
            line += f" (cap {s.limit} from {s.limit_source}; longest before it {s.longest})"
    if len(s.per_source) > 1:
        line += "; per entry " + ", ".join(f"{k}: {v}" for k, v in s.per_source.items())
    if s.per_epoch:
        line += "; per epoch " + ", ".join(f"{k}: {v}" for k, v in s.per_epoch.items())
    if s.packing_efficiency is not None:
        line += f"; packed into {s.rows} rows, efficiency {100 * s.packing_efficiency:.1f}%"
    return line


def collate(
    items: list[Encoded],
    pad_id: int,
    encoder_decoder: bool,
    pad_left: bool = False,
    multiple: int = 1,
    longest: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a list of encoded examples into tensors (labels padded with -100).

    The width is the batch's longest row rounded up to `multiple` (a compiled model then sees a
    few lengths, not one per batch), but never past `longest` (input, labels): the longest rows
    of the whole split, which fit the model's positions.

    Preference pairs become chosen rows followed by rejected rows (one forward scores both);
    KTO examples also get their mismatched KL rows (see `collate_unpaired`).
    """
    if items[0].rejected_ids is not None:
        return collate_pairs(items, pad_id)
    if items[0].desirable is not None:
        return collate_unpaired(items, pad_id)

    def pad(rows: list[list[int]], value: int, cap: int | None = None) -> torch.Tensor:
        longest_here = max(len(r) for r in rows)
        rounded = -(-longest_here // multiple) * multiple
        width = max(min(rounded, cap) if cap else rounded, longest_here)
        padded = [
            ([value] * (width - len(r)) + r) if pad_left else (r + [value] * (width - len(r)))
            for r in rows
        ]
        return torch.tensor(padded, dtype=torch.long)

    cap_in, cap_out = longest or (None, None)
    batch = {
        "input_ids": pad([e.input_ids for e in items], pad_id, cap_in),
        "attention_mask": pad([[1] * len(e.input_ids) for e in items], 0, cap_in),
        "labels": pad([e.labels for e in items], IGNORE, cap_out),
    }
    if encoder_decoder:
        batch["decoder_attention_mask"] = pad([[1] * len(e.labels) for e in items], 0, cap_out)
    return batch


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    padded = [
        ([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows
    ]
    return torch.tensor(padded, dtype=torch.long)


def _rows(ids: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": _pad(ids, pad_id),
        "attention_mask": _pad([[1] * len(r) for r in ids], 0),
        "labels": _pad(labels, IGNORE),
    }


def collate_pairs(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Pairs as 2B rows: the chosen rows, then the rejected rows, padded right to one width."""
    ids = [e.input_ids for e in items] + [e.rejected_ids or [] for e in items]
    labels = [e.labels for e in items] + [e.rejected_labels or [] for e in items]
    batch = _rows(ids, labels, pad_id)
    if all(e.ref_logps is not None for e in items):
        refs = [e.ref_logps[0] for e in items] + [e.ref_logps[1] for e in items]  # type: ignore[index]
        batch["ref_logps"] = torch.tensor(refs, dtype=torch.float64)
    return batch


def _split_prompt(e: Encoded) -> tuple[list[int], list[int]]:
    start = next((i for i, t in enumerate(e.labels) if t != IGNORE), len(e.labels))
    return e.input_ids[:start], e.input_ids[start:]


def collate_unpaired(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """KTO examples, their `desirable` flags, and the KL rows (x_i, y_(i-1)): the completions
    rotated by one within the batch, as TRL's KTOTrainer builds its KL estimate."""
    batch = _rows([e.input_ids for e in items], [e.labels for e in items], pad_id)
    batch["desirable"] = torch.tensor([bool(e.desirable) for e in items], dtype=torch.long)
    parts = [_split_prompt(e) for e in items]
    completions = [c for _, c in parts]
    rotated = completions[-1:] + completions[:-1]
    kl_ids = [p + c for (p, _), c in zip(parts, rotated)]
    kl_labels = [[IGNORE] * len(p) + c for (p, _), c in zip(parts, rotated)]
    kl = _rows(kl_ids, kl_labels, pad_id)
    batch.update({f"kl_{k}": v for k, v in kl.items()})
    if all(e.ref_logps is not None for e in items):
        batch["ref_logps"] = torch.tensor([e.ref_logps[0] for e in items], dtype=torch.float64)  # type: ignore[index]
    return batch


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding input tokens of a batch, padded (attention mask) or packed (positions)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int((~padding_slots(batch["position_ids"])).sum())


Unit = Encoded | list[Encoded]  # an example, or a packed row of examples


@dataclass
class EpochPacking:
    """How one epoch's draw packed: rows and real tokens / (rows x max_seq_len)."""

    rows: int
    efficiency: float


class TrainBatches:
    """Micro-batches of one rank, in the documented global order, resumable by position.

    Every epoch is computed from (seed, epoch) alone: its draw of examples (a shuffle, or the
    mixture when entries set proportions), then, with packing, its own packing of that draw into
    rows (from the token lengths only; the tokenised examples are not touched). So any process can
    rebuild any epoch, which is what makes rank sharding and resume exact.
    """

    def __init__(
        self,
        examples: list[Encoded],
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        pad_id: int,
        encoder_decoder: bool,
        proportions: list[float] | None = None,
        entry_sizes: list[int] | None = None,
        group_by_length: bool = False,
        source_labels: list[str] | None = None,
        max_seq_len: int | None = None,
        accum: int = 1,
        pad_multiple: int = 1,
        fixed_rows: bool = False,
    ) -> None:
        self.examples = examples
        # Shapes for a compiled model: padded batches to a multiple of `pad_multiple` (capped at
        # the longest example), packed rows always max_seq_len wide with `fixed_rows`.
        self.pad_multiple = pad_multiple
        self.fixed_rows = fixed_rows
        self.longest = (
            max((len(e.input_ids) for e in examples), default=0),
            max((len(e.labels) for e in examples), default=0),
        )
        self.accum = accum
        self.batch_size = batch_size
        self.rank, self.world = rank, world
        self.seed = seed
        self.pad_id = pad_id
        self.encoder_decoder = encoder_decoder
        self.max_seq_len = max_seq_len
        self.packed = max_seq_len is not None
        self.proportions = proportions
        self.entry_sizes = entry_sizes or [len(examples)]
        self.group_by_length = group_by_length and not self.packed
        self.source_labels = source_labels or ["data"]
        self._epochs: dict[int, list[Unit]] = {}  # epoch 0 and the current one, rebuilt on demand
        self.micro_batches_per_epoch = self.micro_batches_in(0)  # epoch 0's (others may differ)
        self.epoch = 0
        self.position = 0  # micro-batches of this epoch already taken

    @property
    def units(self) -> list[Unit]:
        """The examples (padded batches), or epoch 0's packed rows in their order."""
        return self.epoch_units(0) if self.packed else self.examples

    def _order_of(self, epoch: int) -> list[int]:
        """Indices into `examples` of an epoch's draw, in order (before packing)."""
        if self.proportions is not None:
            order = mixture_order(self.entry_sizes, self.proportions, self.seed, epoch)
        else:
            order = list(range(len(self.examples)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        if self.group_by_length:
            order = self._grouped(order, epoch)
        return order

    def _grouped(self, order: list[int], epoch: int) -> list[int]:
        """Sort chunks of the order by length into micro-batches, then shuffle those batches
        within the chunk (so long batches do not all come first)."""
        b, chunk = self.batch_size, self.batch_size * GROUP_CHUNK
        rng = random.Random(f"{self.seed}/group/{epoch}")
        out: list[int] = []
        for start in range(0, len(order), chunk):
            part = sorted(
                order[start : start + chunk], key=lambda i: -len(self.examples[i].input_ids)
            )
            blocks = [part[i : i + b] for i in range(0, len(part), b)]
            full = [blk for blk in blocks if len(blk) == b]
            rng.shuffle(full)
            out += [i for blk in full + [blk for blk in blocks if len(blk) < b] for i in blk]
        return out

    def _packed_rows(self, epoch: int) -> list[list[int]]:
        """Rows of an epoch as indices into `examples`, in the epoch's row order.

        The draw is shuffled and best-fit decreasing keeps the draw's order among lengths in the
        same bucket (1/32 of a row), so every epoch puts other examples side by side at the same
        efficiency; the rows are then shuffled too. Only token lengths are read.
        """
        draw = self._order_of(epoch)
        width = self.max_seq_len or 0
        lengths = [len(self.examples[i].input_ids) for i in draw]
        rows = pack(lengths, width, bucket=max(width // PACK_BUCKETS, 1))
        random.Random(f"{self.seed}/rows/{epoch}").shuffle(rows)
        return [[draw[i] for i in row] for row in rows]

    def epoch_units(self, epoch: int) -> list[Unit]:
        """The training units of an epoch in order: examples, or packed rows of examples."""
        if epoch not in self._epochs:
            if self.packed:
                units: list[Unit] = [
                    [self.examples[i] for i in row] for row in self._packed_rows(epoch)
                ]
            else:
                units = [self.examples[i] for i in self._order_of(epoch)]
            # Keep epoch 0 (stats, `sample`) and the newest; a long run holds at most two.
            self._epochs = {k: v for k, v in self._epochs.items() if k == 0}
            self._epochs[epoch] = units
        return self._epochs[epoch]

    def packing_of(self, epoch: int) -> EpochPacking | None:
        """Rows and packing efficiency of an epoch (None without packing)."""
        if not self.packed:
            return None
        rows = self.epoch_units(epoch)
        real = sum(len(e.input_ids) for row in rows for e in row)  # type: ignore[union-attr]
        return EpochPacking(len(rows), real / max(len(rows) * (self.max_seq_len or 1), 1))

    def micro_batches_in(self, epoch: int) -> int:
        """Micro-batches of an epoch on each rank (a packed epoch's row count varies a little).

        An epoch ends on an optimizer-step boundary (whole global batches of
        batch_size x world x accum units), so every world size with the same global batch cuts
        it at the same unit and one process keeps matching many in later epochs.
        """
        n = len(self.epoch_units(epoch)) if self.packed else len(self.examples)
        return n // (self.batch_size * self.world * self.accum) * self.accum

    def steps_for_epochs(self, num_epochs: float) -> int:
        """Optimizer steps in `num_epochs` epochs, each epoch counted with its own micro-batches
        (packed epochs differ by a row or two); a fractional last epoch is rounded up."""
        whole = int(num_epochs)
        steps = sum(self.micro_batches_in(e) // self.accum for e in range(whole))
        if num_epochs > whole:
            steps += math.ceil((num_epochs - whole) * self.micro_batches_in(whole) / self.accum)
        return steps

    def _collate(self, picked: list[Unit]) -> dict[str, torch.Tensor]:
        if self.packed:
            width = self.max_seq_len if self.fixed_rows else None
            return collate_packed(picked, self.pad_id, width)  # type: ignore[arg-type]
        return collate(
            picked,  # type: ignore[arg-type]
            self.pad_id,
            self.encoder_decoder,
            multiple=self.pad_multiple,
            longest=self.longest,
        )

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next micro-batch of this rank (moves to the next epoch when one ends)."""
        while self.position >= self.micro_batches_in(self.epoch):
            self.epoch, self.position = self.epoch + 1, 0
        start = (self.position * self.world + self.rank) * self.batch_size
        picked = self.epoch_units(self.epoch)[start : start + self.batch_size]
        self.position += 1
        return self._collate(picked)

    def sample(self, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
        """`n` micro-batches drawn independently of the training position (same on every rank
        given the same seed, sharded like training)."""
        pool = self.units
        order = list(range(len(pool)))
        random.Random(seed).shuffle(order)
        out = []
        for k in range(n):
            start = ((k * self.world + self.rank) * self.batch_size) % max(len(order), 1)
            picked = [pool[i] for i in order[start : start + self.batch_size]]
            out.append(self._collate(picked))
        return out

    def used_counts(self) -> dict[str, int]:
        """Examples of each dataset entry taken so far by all ranks together."""
        counts: Counter[int] = Counter()
        per_batch = self.batch_size * self.world
        for epoch in range(self.epoch + 1):
            batches = self.micro_batches_in(epoch) if epoch < self.epoch else self.position
            for unit in self.epoch_units(epoch)[: batches * per_batch]:
                for example in unit if isinstance(unit, list) else [unit]:
                    counts[example.source] += 1
        return {label: counts[i] for i, label in enumerate(self.source_labels)}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


@dataclass
class DataBundle:
    train: TrainBatches
    validation: list[Encoded]
    test_examples: list[Example]
    stats: dict[str, SplitStats]
    encoder_decoder: bool
    pad_id: int
    from_cache: bool = False
    cache_path: Path | None = None  # this data's folder in the tokenised-data cache

    def eval_batches(
        self, batch_size: int, rank: int, world: int, max_batches: int | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's share of the validation set, in fixed order (strided by rank).

        Every rank yields the same number of batches (sharded engines run collectives in each
        forward): a short share is topped up with a copy of an example whose labels are all
        ignored, so it adds no loss and no tokens.
        """
        mine = self.validation[rank::world]
        share = -(-len(self.validation) // world)
        if self.validation and len(mine) < share:
            filler = self.validation[0]
            blank = dataclasses.replace(filler, labels=[IGNORE] * len(filler.labels))
            if blank.rejected_labels is not None:
                blank.rejected_labels = [IGNORE] * len(blank.rejected_labels)
            mine = mine + [blank]
        limit = len(mine) if max_batches is None else min(len(mine), max_batches * batch_size)
        for start in range(0, limit, batch_size):
            yield collate(mine[start : start + batch_size], self.pad_id, self.encoder_decoder)


# ---------------------------------------------------------------- reading and tokenising


def load_examples(cfg: Config, split: str) -> list[Example]:
    """Formatted (not tokenised) examples of a split, across its dataset entries."""
    return [ex for _, examples in formatted_entries(cfg, split) for ex in examples]


def formatted_entries(cfg: Config, split: str) -> list[tuple[DatasetEntry, list[Example]]]:
    """Each dataset entry of `split` with its formatted examples."""
    out = []
    for entry in dataset_entries(cfg.data, split):
        check_entry(entry)
        out.append((entry, [format_record(record, entry) for record in read_entry(entry)]))
    return out


def length_cap(
    cfg: Config, entry: DatasetEntry | None = None, context_len: int | None = None
) -> tuple[int | None, str]:
    """The longest example a run trains on, and which setting sets it (see `cap_of`)."""
    return cap_of((entry or cfg.data).cutoff_len, cfg.data.max_seq_len, context_len)


def cap_of(
    cutoff_len: int | None, max_seq_len: int | None, context_len: int | None
) -> tuple[int | None, str]:
    """The one length rule (docs/data.md, Lengths): the smallest of the entry's `cutoff_len`,
    `data.max_seq_len` (packed or not) and the model's context (`max_position_embeddings`);
    longer examples are cut or refused as `overlong` says, never passed on silently. Training
    and generation (`generate.prompt_limits`) both cut with it."""
    candidates = [
        (v, name)
        for v, name in (
            (cutoff_len, "cutoff_len"),
            (max_seq_len, "max_seq_len"),
            (context_len, "the model context"),
        )
        if v
    ]
    return min(candidates, key=lambda c: c[0]) if candidates else (None, "")


def limits_of(
    cfg: Config, entry: DatasetEntry | None = None, context_len: int | None = None
) -> Limits:
    """Length limits of an entry (the `data` section's when no entry is given)."""
    d = cfg.data
    source = entry or d
    return Limits(
        source.max_input_tokens,
        source.max_output_tokens,
        length_cap(cfg, entry, context_len)[0],
        d.train_on_inputs,
        source.overlong,
        getattr(source, "truncation_side", "right"),
    )


def tokenize_examples(
    examples: list[Example],
    tokenizer: Any,
    limits: Limits,
    encoder_decoder: bool,
    stats: SplitStats,
    source: int = 0,
    workers: int = 0,
) -> list[Encoded]:
    """Tokenise examples (in `workers` processes for large sets), counting truncated and dropped
    ones into `stats`."""
    for example in examples:
        if example.answer is None:
            raise UserError(f"{example.source}: no output to train on", "every record needs one")
    out = []
    for encoded in encode_parallel(tokenizer, examples, limits, encoder_decoder, workers):
        stats.truncated += bool(encoded is None or encoded.truncated)
        if encoded is None:
            stats.dropped += 1
            continue
        encoded.source = source
        out.append(encoded)
    stats.examples += len(out)
    stats.tokens += sum(len(e.input_ids) for e in out)
    return out


def _length_stats(stats: SplitStats, encoded: list[Encoded]) -> None:
    """Mean, 95th percentile and maximum tokens per example, and the longest before the cap."""
    lengths = sorted(len(e.input_ids) for e in encoded)
    if not lengths:
        return
    stats.mean_len = sum(lengths) / len(lengths)
    stats.p95_len = lengths[min(math.ceil(0.95 * len(lengths)) - 1, len(lengths) - 1)]
    stats.max_len = lengths[-1]
    stats.longest = max(stats.longest, max(e.full_length for e in encoded))


def _refuse_overlong(split: str, label: str, n: int, total: int, limits: Limits, why: str) -> None:
    raise UserError(
        f"data.{split} ({label}): {n} of {total} examples are longer than the limits "
        f"(length cap {limits.cutoff_len} from {why or 'none'}; max_input_tokens "
        f"{limits.max_input_tokens}, max_output_tokens {limits.max_output_tokens})",
        "shorten them, raise the limits, or set data.overlong=truncate (or drop)",
    )


def _tokenize_splits(
    cfg: Config, tokenizer: Any, encoder_decoder: bool, context_len: int | None = None
) -> dict[str, Any]:
    """Read, format and tokenise train and validation (holding out val_set_size if asked)."""
    train = formatted_entries(cfg, "train")
    validation = formatted_entries(cfg, "validation")
    if not any(examples for _, examples in validation) and cfg.data.val_set_size:
        tagged = [(i, ex) for i, (_, examples) in enumerate(train) for ex in examples]
        size = cfg.data.val_set_size
        n_val = int(size * len(tagged)) if size < 1 else int(size)
        random.Random(cfg.seed).shuffle(tagged)
        held, kept = tagged[:n_val], tagged[n_val:]
        validation = [(train[0][0], [ex for _, ex in held])]
        train = [(entry, [ex for i, ex in kept if i == k]) for k, (entry, _) in enumerate(train)]
    out = {}
    for split, groups in (("train", train), ("validation", validation)):
        stats = SplitStats()
        encoded: list[Encoded] = []
        for k, (entry, examples) in enumerate(groups):
            before, cut_before = stats.examples, stats.truncated
            limits = limits_of(cfg, entry, context_len)
            cap, why = length_cap(cfg, entry, context_len)
            if cap is not None and (stats.limit is None or cap < stats.limit):
                stats.limit, stats.limit_source = cap, why
            part = tokenize_examples(
                examples, tokenizer, limits, encoder_decoder, stats, k, cfg.data.num_workers
            )
            if entry.overlong == "error" and stats.truncated > cut_before:
                _refuse_overlong(
                    split, entry.label, stats.truncated - cut_before, len(examples), limits, why
                )
            encoded += part
            stats.per_source[entry.label] = stats.per_source.get(entry.label, 0) + (
                stats.examples - before
            )
        _length_stats(stats, encoded)
        out[split] = (encoded, dataclasses.asdict(stats))
    return out


def _cache_folder(cfg: Config) -> Path | None:
    if not cfg.data.cache:
        return None
    return Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()


def _key(cfg: Config, tokenizer: Any, encoder_decoder: bool, context_len: int | None) -> str:
    entries = {}
    for split in ("train", "validation"):
        entries[split] = [
            {**vars(e), "content": content_fingerprint(e)} for e in dataset_entries(cfg.data, split)
        ]
    d = cfg.data
    return cache_key(
        {
            "entries": entries,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "limits": [d.train_on_inputs, d.max_seq_len, context_len],
            "encoder_decoder": encoder_decoder,
            "val": [d.val_set_size, cfg.seed],
            "encoding": ENCODING_VERSION,
        }
    )


def tokenized_splits(
    cfg: Config, tokenizer: Any, encoder_decoder: bool, context_len: int | None = None
) -> tuple[dict[str, tuple[list[Encoded], SplitStats]], bool]:
    """Train and validation examples with their stats, from the cache when it has them."""
    build = lambda: _tokenize_splits(cfg, tokenizer, encoder_decoder, context_len)  # noqa: E731
    folder = _cache_folder(cfg)
    key = _key(cfg, tokenizer, encoder_decoder, context_len) if folder is not None else ""
    splits, hit = cached_splits(folder, key, build)
    return {name: (ex, SplitStats(**stats)) for name, (ex, stats) in splits.items()}, hit


DATA_KINDS = {
    "tokens": "a supervised format (input_output, alpaca, chat, completion)",
    "pairs": "data.format=preference ({prompt, chosen, rejected} records)",
    "unpaired": "data.format=kto ({prompt, completion, label} records)",
}


def data_kind_of(example: Encoded) -> str:
    """tokens, pairs or unpaired: what kind of example the formats made."""
    if example.rejected_ids is not None:
        return "pairs"
    return "tokens" if example.desirable is None else "unpaired"


def check_data_kind(cfg: Config, examples: list[Encoded]) -> None:
    """Every example is of the kind the objective trains on (pairs for DPO, ...)."""
    from tunesmith.objectives import OBJECTIVES

    wanted = OBJECTIVES[cfg.objective.name].data_kind
    found = {data_kind_of(e) for e in examples}
    for kind in sorted(found - {wanted}):
        raise UserError(
            f"objective.name={cfg.objective.name} trains on {DATA_KINDS[wanted]}, but the data "
            f"holds {DATA_KINDS[kind]}",
            "set data.format (per dataset entry) or objective.name to match",
        )


def _check_packing(cfg: Config, encoder_decoder: bool) -> int:
    d = cfg.data
    if encoder_decoder:
        raise UserError("data.packing is for decoder-only models", "set data.packing=false for T5")
    if not d.max_seq_len:
        raise UserError("data.packing needs data.max_seq_len", "e.g. data.max_seq_len=512")
    return d.max_seq_len


def build_dataloaders(
    cfg: Config,
    tokenizer: Any,
    rank: int,
    world: int,
    encoder_decoder: bool,
    context_len: int | None = None,
    compiled: bool = False,
) -> DataBundle:
    """Read, format, tokenise (or read the cache), mix, pack and shard the data of a run.

    `context_len` is the model's context (`models.load.model_context`): no example is longer.
    `compiled`: the model is compiled, so batches come in few shapes (data.pad_to_multiple_of,
    default 64; packed rows exactly data.max_seq_len wide).

    Raises:
        UserError: no training data, bad records, an empty split, too few examples for one
            global batch, packing without max_seq_len or on an encoder-decoder model, examples
            over the limits with `overlong=error`.
    """
    from tunesmith.train.loop import resolve_grad_accum  # the loop imports this module

    load_plugins(cfg.plugins)
    if cfg.data.train is None:
        raise UserError("data.train is not set", "point it at a data file, folder or preset")
    max_seq_len = _check_packing(cfg, encoder_decoder) if cfg.data.packing else None
    splits, hit = tokenized_splits(cfg, tokenizer, encoder_decoder, context_len)
    train, train_stats = splits["train"]
    if not train:
        raise UserError(f"data.train={cfg.data.train!r}: no training examples", "check the files")
    check_data_kind(cfg, train + splits["validation"][0])
    entries = dataset_entries(cfg.data, "train")
    labels = [e.label for e in entries]
    sizes = [sum(1 for e in train if e.source == k) for k in range(len(entries))]
    proportions = normalised([e.proportion for e in entries], labels)
    if proportions is not None:
        counts = Counter(train[i].source for i in mixture_order(sizes, proportions, cfg.seed, 0))
        train_stats.per_epoch = {label: counts[k] for k, label in enumerate(labels)}
    pad_id = tokenizer.pad_token_id
    batches = TrainBatches(
        train,
        cfg.train.batch_size,
        rank,
        world,
        cfg.seed,
        pad_id,
        encoder_decoder,
        proportions=proportions,
        entry_sizes=sizes,
        group_by_length=cfg.data.group_by_length,
        source_labels=labels,
        max_seq_len=max_seq_len,
        accum=resolve_grad_accum(cfg, world),
        pad_multiple=cfg.data.pad_to_multiple_of or (AUTO_PAD_MULTIPLE if compiled else 1),
        fixed_rows=compiled,
    )
    packing = batches.packing_of(0)
    if packing is not None:  # epoch 0's; every epoch packs its own draw (see TrainBatches)
        train_stats.rows, train_stats.packing_efficiency = packing.rows, packing.efficiency
    if batches.micro_batches_per_epoch == 0:
        what = "packed rows" if batches.packed else "examples"
        raise UserError(
            f"data.train has {len(batches.units)} {what}, fewer than one optimizer step takes "
            f"({cfg.train.batch_size} x {world} processes x {batches.accum} accumulated)",
            "lower train.batch_size or add data",
        )
    validation, val_stats = splits["validation"]
    folder = _cache_folder(cfg)
    return DataBundle(
        train=batches,
        validation=validation,
        test_examples=load_examples(cfg, "test"),
        stats={"train": train_stats, "validation": val_stats},
        encoder_decoder=encoder_decoder,
        pad_id=pad_id,
        from_cache=hit,
        cache_path=None
        if folder is None
        else folder / _key(cfg, tokenizer, encoder_decoder, context_len),
    )
