"""Tokenised examples -> batches for each rank, with an exact, resumable position.

Order: each epoch is a permutation of the training examples drawn from `seed + epoch`. The global
micro-batch k of an epoch takes permutation slots [(k*world + rank)*B, (k*world + rank + 1)*B) on
each rank, so with the same global batch (batch_size x world x grad_accum) one process and many see
the same examples in the same optimizer step. The position is two integers (epoch, micro-batch),
so resume continues at the exact next example without replaying the loader.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from tunesmith.config import Config
from tunesmith.data.formats import Example, format_record
from tunesmith.data.sources import dataset_entries, read_records
from tunesmith.data.tokenize import IGNORE, Encoded, Limits, encode
from tunesmith.errors import UserError


@dataclass
class SplitStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    per_source: dict[str, int] = field(default_factory=dict)


def collate(
    items: list[Encoded], pad_id: int, encoder_decoder: bool, pad_left: bool = False
) -> dict[str, torch.Tensor]:
    """Pad a list of encoded examples into tensors (labels padded with -100)."""

    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        padded = [
            ([value] * (width - len(r)) + r) if pad_left else (r + [value] * (width - len(r)))
            for r in rows
        ]
        return torch.tensor(padded, dtype=torch.long)

    batch = {
        "input_ids": pad([e.input_ids for e in items], pad_id),
        "attention_mask": pad([[1] * len(e.input_ids) for e in items], 0),
        "labels": pad([e.labels for e in items], IGNORE),
    }
    if encoder_decoder:
        batch["decoder_attention_mask"] = pad([[1] * len(e.labels) for e in items], 0)
    return batch


class TrainBatches:
    """Micro-batches of one rank, in the documented global order, resumable by position."""

    def __init__(
        self,
        examples: list[Encoded],
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        pad_id: int,
        encoder_decoder: bool,
    ) -> None:
        self.examples = examples
        self.batch_size = batch_size
        self.rank, self.world = rank, world
        self.seed = seed
        self.pad_id = pad_id
        self.encoder_decoder = encoder_decoder
        self.micro_batches_per_epoch = len(examples) // (batch_size * world)
        self.epoch = 0
        self.position = 0  # micro-batches of this epoch already taken
        self._order: list[int] | None = None

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next micro-batch of this rank (moves to the next epoch when one ends)."""
        if self.position >= self.micro_batches_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = self._permutation(self.epoch)
        start = (self.position * self.world + self.rank) * self.batch_size
        picked = [self.examples[i] for i in self._order[start : start + self.batch_size]]
        self.position += 1
        return collate(picked, self.pad_id, self.encoder_decoder)

    def sample(self, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
        """`n` micro-batches drawn independently of the training position (same on every rank
        given the same seed, sharded like training)."""
        order = list(range(len(self.examples)))
        random.Random(seed).shuffle(order)
        out = []
        for k in range(n):
            start = ((k * self.world + self.rank) * self.batch_size) % max(len(order), 1)
            picked = [self.examples[i] for i in order[start : start + self.batch_size]]
            out.append(collate(picked, self.pad_id, self.encoder_decoder))
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None


@dataclass
class DataBundle:
    train: TrainBatches
    validation: list[Encoded]
    test_examples: list[Example]
    stats: dict[str, SplitStats]
    encoder_decoder: bool
    pad_id: int

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
            mine = mine + [Encoded(filler.input_ids, [IGNORE] * len(filler.labels), False)]
        limit = len(mine) if max_batches is None else min(len(mine), max_batches * batch_size)
        for start in range(0, limit, batch_size):
            yield collate(mine[start : start + batch_size], self.pad_id, self.encoder_decoder)


def load_examples(cfg: Config, split: str) -> list[Example]:
    """Formatted (not tokenised) examples of a split, across its dataset entries."""
    examples = []
    for entry in dataset_entries(cfg.data, split):
        for record in read_records(entry.path):
            examples.append(format_record(record, entry))
    return examples


def limits_of(cfg: Config) -> Limits:
    d = cfg.data
    return Limits(
        d.max_input_tokens, d.max_output_tokens, d.cutoff_len, d.train_on_inputs, d.overlong
    )


def tokenize_examples(
    examples: list[Example],
    tokenizer: Any,
    limits: Limits,
    encoder_decoder: bool,
    stats: SplitStats,
) -> list[Encoded]:
    out = []
    for example in examples:
        if example.answer is None:
            raise UserError(f"{example.source}: no output to train on", "every record needs one")
        encoded = encode(tokenizer, example, limits, encoder_decoder)
        stats.truncated += bool(encoded is None or encoded.truncated)
        if encoded is None:
            stats.dropped += 1
            continue
        out.append(encoded)
    stats.examples = len(out)
    return out


def build_dataloaders(
    cfg: Config, tokenizer: Any, rank: int, world: int, encoder_decoder: bool
) -> DataBundle:
    """Read, format, tokenise and shard the data of a run.

    Raises:
        UserError: no training data, an empty split, too few examples for one global batch.
    """
    if cfg.data.train is None:
        raise UserError("data.train is not set", "point it at a jsonl/json file or folder")
    limits = limits_of(cfg)
    stats = {"train": SplitStats(), "validation": SplitStats()}
    train_examples = load_examples(cfg, "train")
    val_examples = load_examples(cfg, "validation")
    if not val_examples and cfg.data.val_set_size:
        size = cfg.data.val_set_size
        n_val = int(size * len(train_examples)) if size < 1 else int(size)
        shuffled = list(train_examples)
        random.Random(cfg.seed).shuffle(shuffled)
        val_examples, train_examples = shuffled[:n_val], shuffled[n_val:]
    train = tokenize_examples(train_examples, tokenizer, limits, encoder_decoder, stats["train"])
    validation = tokenize_examples(
        val_examples, tokenizer, limits, encoder_decoder, stats["validation"]
    )
    if not train:
        raise UserError(f"data.train={cfg.data.train!r}: no training examples", "check the files")
    pad_id = tokenizer.pad_token_id
    batches = TrainBatches(
        train, cfg.train.batch_size, rank, world, cfg.seed, pad_id, encoder_decoder
    )
    if batches.micro_batches_per_epoch == 0:
        raise UserError(
            f"data.train has {len(train)} examples, fewer than one micro-batch on every rank "
            f"({cfg.train.batch_size} x {world})",
            "lower train.batch_size or add data",
        )
    return DataBundle(
        train=batches,
        validation=validation,
        test_examples=load_examples(cfg, "test"),
        stats=stats,
        encoder_decoder=encoder_decoder,
        pad_id=pad_id,
    )
