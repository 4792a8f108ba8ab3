"""Text metrics for generated outputs, computed offline, registered by name.

    from tunesmith.metrics import score
    score(["rougeL", "exact_match"], predictions, references)  # {"rougeL": 0.41, ...}

Every metric returns a per-example value in [0, 1] (not x100); `score` reports the mean over
examples. A reference may be one string or a list of acceptable strings, in which case an
example scores its best match. Plugins add metrics by putting a function
`(prediction, reference) -> float` into `METRICS`.

- `rouge1`, `rouge2`, `rougeL`, `rougeLsum`: F-measure from Google's `rouge-score` package, with
  its Porter stemmer (the setting of the ROUGE papers and of HF `evaluate`). `rougeLsum` treats
  newlines as sentence boundaries; no sentence splitter is run, because NLTK's needs a download.
- `exact_match`: 1.0 when the strings are equal after stripping surrounding whitespace.
- `f1`: SQuAD token F1: lowercase, punctuation and English articles removed, whitespace tokens,
  overlap counted as multisets.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache

from tunesmith.errors import UserError

Reference = str | Sequence[str]
Metric = Callable[[str, str], float]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@cache
def _rouge_scorer(rouge_type: str):
    # Imported lazily: rouge-score pulls in nltk, which only evaluation needs.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([rouge_type], use_stemmer=True)


def _rouge(rouge_type: str) -> Metric:
    def metric(prediction: str, reference: str) -> float:
        return _rouge_scorer(rouge_type).score(reference, prediction)[rouge_type].fmeasure

    metric.__name__ = rouge_type
    metric.__doc__ = f"{rouge_type} F-measure with stemming, in [0, 1]."
    return metric


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when prediction and reference are equal after stripping surrounding whitespace."""
    return float(prediction.strip() == reference.strip())


_PUNCTUATION = set(string.punctuation)


def _squad_tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between prediction and reference, in [0, 1].

    Two texts with no tokens after normalisation score 1.0 (they agree); one empty side scores 0.
    """
    pred, ref = _squad_tokens(prediction), _squad_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


METRICS: dict[str, Metric] = {
    **{name: _rouge(name) for name in ROUGE_TYPES},
    "exact_match": exact_match,
    "f1": f1,
}


def get_metric(name: str) -> Metric:
    """Look a metric up by name.

    Raises:
        UserError: the name is not registered (with the closest registered name as a hint).
    """
    if name in METRICS:
        return METRICS[name]
    close = difflib.get_close_matches(name, METRICS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known metrics: {', '.join(METRICS)}"
    raise UserError(f"unknown metric {name!r}", hint=hint)


def score(
    metric_names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[Reference],
) -> dict[str, float]:
    """Mean of each named metric over the examples, each in [0, 1].

    Args:
        metric_names: names registered in `METRICS`.
        predictions: one generated text per example.
        references: per example, the reference text or a list of acceptable references (the best
            match counts).

    Raises:
        UserError: an unknown metric name.
        ValueError: predictions and references differ in length, or there are none.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    metrics = {name: get_metric(name) for name in metric_names}
    results = {}
    for name, metric in metrics.items():
        total = 0.0
        for prediction, reference in zip(predictions, references, strict=True):
            candidates = [reference] if isinstance(reference, str) else list(reference)
            total += max(metric(prediction, candidate) for candidate in candidates)
        results[name] = total / len(predictions)
    return results
