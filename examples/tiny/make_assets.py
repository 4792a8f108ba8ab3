"""Regenerate the tiny embedded assets: a byte-level BPE tokenizer and a number-spelling task.

    python examples/tiny/make_assets.py

Both are small, deterministic and ours (no licence questions): the quickstart recipe and the tests
build tiny models from a config and train them on this task in seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent
ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def spell(n: int) -> str:
    """English words for 0 <= n < 1000."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + spell(rest))


def make_task() -> None:
    rng = random.Random(0)
    numbers = list(range(1000))
    rng.shuffle(numbers)
    splits = {"train": numbers[:400], "validation": numbers[400:440], "test": numbers[440:460]}
    folder = HERE / "numbers"
    folder.mkdir(exist_ok=True)
    for split, values in splits.items():
        with (folder / f"{split}.jsonl").open("w") as f:
            for n in values:
                f.write(json.dumps({"input": str(n), "output": spell(n)}) + "\n")


def make_tokenizer() -> None:
    corpus = [f"Spell {n} in words: {spell(n)}" for n in range(1000)]
    corpus += [line for line in Path(__file__).read_text().splitlines() if line.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.save_pretrained(HERE / "tokenizer")


if __name__ == "__main__":
    make_task()
    make_tokenizer()
    print("wrote", HERE / "numbers", HERE / "tokenizer")
