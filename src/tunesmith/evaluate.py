"""Evaluation: validation loss and perplexity during training; task metrics (ROUGE, BLEU, chrF,
GLEU, exact match, F1; see tunesmith.metrics) from generations of a saved model.

    tunesmith evaluate runs/a --data test.jsonl --metrics rougeL,exact_match
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.data.formats import Example
from tunesmith.data.loader import DataBundle
from tunesmith.generate import (
    GenerationSettings,
    PromptLimits,
    PromptStats,
    generate_texts,
    load_for_inference,
    prompt_limits,
)
from tunesmith.metrics import score


@torch.no_grad()
def validation_metrics(
    model: nn.Module,
    data: DataBundle,
    strategy: Any,
    batch_size: int,
    max_batches: int | None,
    objective: Any = None,
    reference: Any = None,
) -> dict[str, float]:
    """`val_loss` (the objective's loss over the whole set: mean nats per target token for
    supervised runs, with `val_ppl`) and the objective's metrics as `val_<name>`; {} if no data.

    Every rank evaluates its strided share; sums are reduced, so the result does not depend on the
    number of processes or the batch size.
    """
    from tunesmith.objectives.sft import Sft

    if not data.validation:
        return {}
    objective = objective or Sft()
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    for batch in data.eval_batches(batch_size, strategy.rank, strategy.world_size, max_batches):
        counts = objective.counts(batch)
        batch = {k: v.to(strategy.device) for k, v in batch.items()}
        with strategy.micro_batch(is_last=True):
            loss_sums, metrics = objective.loss(model, batch, reference)
        for unit, value in loss_sums.items():
            count = torch.tensor(float(counts[unit]), dtype=torch.float64)
            _add(sums, f"loss/{unit}", value.double(), count)
        for name, (value, count) in metrics.items():
            _add(sums, name, value.double(), count.double())
    names = sorted(sums)
    totals = strategy.reduce_sum(torch.stack([sums[n] for n in names]))
    model.train(was_training)
    reduced = dict(zip(names, totals))
    loss = sum(float(v[0] / v[1].clamp(min=1)) for n, v in reduced.items() if n.startswith("loss/"))
    out = {"val_loss": loss}
    if objective.loss_is_nll:
        out["val_ppl"] = math.exp(min(loss, 50.0))
    for name, (value, count) in reduced.items():
        if not name.startswith("loss/") and count > 0:
            out[f"val_{name}"] = float(value / count)
    return out


def _add(
    sums: dict[str, torch.Tensor], name: str, value: torch.Tensor, count: torch.Tensor
) -> None:
    pair = torch.stack([value, count.to(value.device)])
    sums[name] = sums[name] + pair if name in sums else pair


def task_metrics(
    model_dir: Path,
    examples: list[Example],
    names: list[str],
    settings: GenerationSettings,
    limits: PromptLimits | int | None = None,
    predictions_path: Path | None = None,
) -> dict[str, float]:
    """Generate for `examples` with a saved model and score against their answers.

    Prompts are cut as training cut them (`limits`: the entry's max_input_tokens and truncation
    side; an int is a max_input_tokens cut on the right). Runs on one process from the saved
    final/ folder, so it works the same after any strategy. Examples without an answer are
    skipped; an example with several references (JFLEG) is scored against all of them. The
    inputs are the sources GLEU needs. Returns {metric: mean in [0, 1]} plus `n_examples` and `n_truncated` (prompts cut).
    """
    scored = [ex for ex in examples if ex.answer is not None]
    if not scored or not names:
        return {}
    loaded = load_for_inference(model_dir)
    stats = PromptStats()
    predictions = generate_texts(
        loaded.model,
        loaded.tokenizer,
        scored,
        loaded.encoder_decoder,
        settings,
        limits,
        stats=stats,
    )
    results = score(
        names, predictions, example_references(scored), [ex.input_text for ex in scored]
    )
    if predictions_path is not None:
        with predictions_path.open("w", encoding="utf-8") as f:
            for ex, pred in zip(scored, predictions):
                reference = ex.reference or ex.answer
                row = {"prompt": ex.prompt, "reference": reference, "generated_text": pred}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {**results, "n_examples": len(scored), "n_truncated": stats.truncated}


def example_references(examples: list[Example]) -> list[list[str]]:
    """Per example, every reference it has (its answer when it has no reference list)."""
    return [
        [str(r).strip() for r in ex.reference] if ex.reference else [ex.answer.strip()]
        for ex in examples
    ]


def metrics_after_training(
    cfg: Any,
    final_dir: Path,
    test_examples: list[Example],
    predictions_path: Path | None = None,
) -> dict[str, float]:
    """`eval.metrics` on the test split (or validation) with the model in `final_dir`, on rank 0.

    Prompts are cut with the limits of that split's first dataset entry (presets resolved; a
    held-out validation share uses the first training entry's), as training cut them.
    Predictions go to `predictions_path` (default: predictions.jsonl beside `final_dir`).
    """
    from tunesmith.data.loader import load_examples
    from tunesmith.data.sources import dataset_entries

    split = "test" if test_examples else "validation"
    examples = test_examples or load_examples(cfg, split)
    entries = dataset_entries(cfg.data, split) or dataset_entries(cfg.data, "train")
    limits = prompt_limits(entries[0] if entries else cfg.data, cfg.data.max_seq_len)
    if cfg.eval.metrics_examples is not None:
        examples = examples[: cfg.eval.metrics_examples]
    settings = GenerationSettings(
        max_new_tokens=cfg.eval.max_new_tokens,
        num_beams=cfg.eval.num_beams,
        batch_size=cfg.eval.batch_size or cfg.train.batch_size,
    )
    return task_metrics(
        final_dir,
        examples,
        list(cfg.eval.metrics),
        settings,
        limits,
        predictions_path=predictions_path or final_dir.parent / "predictions.jsonl",
    )
