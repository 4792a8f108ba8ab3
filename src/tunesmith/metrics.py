"""Text metrics for generated outputs, computed offline, registered by name.

    from tunesmith.metrics import score
    score(["rougeL", "bleu"], predictions, references)  # {"rougeL": 0.41, "bleu": 0.23}
    score(["gleu"], predictions, references, sources=inputs)  # GLEU also needs the inputs

Every metric reports a value in [0, 1] (not x100). A reference may be one string or a list of
acceptable strings; how several references count is part of each metric's definition:

| metric | level | several references |
|---|---|---|
| `rouge1`, `rouge2`, `rougeL`, `rougeLsum` | mean of per-example F | best reference per example (as `rouge-score`'s `score_multi`) |
| `exact_match`, `f1` | mean of per-example | best reference per example (as the SQuAD script) |
| `bleu` | corpus (sacrebleu, 13a tokens) | all at once: n-gram counts clipped by the max over references, closest reference length |
| `chrf` | corpus (sacrebleu chrF, char 6-grams, beta 2) | the best-scoring reference per example (sacrebleu's rule) |
| `gleu` | corpus (Napoles et al. 2016, JFLEG's) | one reference drawn per example, 500 draws, mean (the official script's seeds) |

- `rouge*`: F-measure from Google's `rouge-score` package, with its Porter stemmer (the setting
  of the ROUGE papers and of HF `evaluate`). `rougeLsum` treats newlines as sentence boundaries;
  no sentence splitter is run, because NLTK's needs a download.
- `exact_match`: 1.0 when the strings are equal after stripping surrounding whitespace.
- `f1`: SQuAD token F1: lowercase, punctuation and English articles removed, whitespace tokens,
  overlap counted as multisets.
- `gleu`: GLEU for grammatical error correction: BLEU-style n-gram precision (n = 1..4, brevity
  penalty) where an n-gram the hypothesis keeps from the *source* but the reference changed counts
  against it. Needs the source sentences (`sources=`); texts are split on whitespace (JFLEG is
  tokenised). Copying JFLEG's test sources scores 0.405, dev 0.382, the published baselines.

Plugins add a per-example metric by putting a function `(prediction, reference) -> float` into
`METRICS`, or a corpus metric by putting a `CorpusMetric` there.
"""

from __future__ import annotations

import difflib
import math
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from tunesmith.errors import UserError

Reference = str | Sequence[str]
Metric = Callable[[str, str], float]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass(frozen=True)
class CorpusMetric:
    """A metric of the whole set: `fn(predictions, references, sources) -> float` in [0, 1].

    `references` holds a list of references per example; `sources` is None unless
    `needs_sources` (then `score` insists on them).
    """

    fn: Callable[[Sequence[str], list[list[str]], Sequence[str] | None], float]
    needs_sources: bool = False


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


def _ref_streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position, None where an example has fewer."""
    width = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def _sacrebleu(name: str):
    # Imported lazily, like rouge-score: only evaluation needs it.
    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError:
        raise UserError(f"metric {name} needs sacrebleu", "pip install 'tunesmith[eval]'") from None
    return BLEU() if name == "bleu" else CHRF()


def bleu(predictions: Sequence[str], references: list[list[str]], sources=None) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, exponential smoothing off) / 100."""
    return _sacrebleu("bleu").corpus_score(list(predictions), _ref_streams(references)).score / 100


def chrf(predictions: Sequence[str], references: list[list[str]], sources=None) -> float:
    """Corpus chrF (character 6-grams, beta 2, sacrebleu) / 100."""
    return _sacrebleu("chrf").corpus_score(list(predictions), _ref_streams(references)).score / 100


GLEU_ORDER = 4
GLEU_DRAWS = 500


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) + 1 - n))


def _gleu_stats(hyp: list[str], src: list[str], ref: list[str]) -> list[int]:
    """[hyp len, ref len, then per order: credited matches, hypothesis n-grams]."""
    stats = [len(hyp), len(ref)]
    for n in range(1, GLEU_ORDER + 1):
        h, s, r = _ngrams(hyp, n), _ngrams(src, n), _ngrams(ref, n)
        # Source n-grams the reference does not keep: keeping them is not a correction.
        changed = Counter({gram: c for gram, c in s.items() if gram not in r})
        matches = sum((h & r).values()) - sum((h & changed).values())
        stats += [max(matches, 0), max(len(hyp) + 1 - n, 0)]
    return stats


def _gleu_from_stats(stats: list[int]) -> float:
    if any(x == 0 for x in stats):
        return 0.0
    hyp_len, ref_len = stats[:2]
    log_precision = sum(math.log(m / t) for m, t in zip(stats[2::2], stats[3::2])) / GLEU_ORDER
    return math.exp(min(0.0, 1 - ref_len / hyp_len) + log_precision)


def gleu(predictions: Sequence[str], references: list[list[str]], sources=None) -> float:
    """Corpus GLEU (Napoles et al. 2015, revised 2016), the JFLEG scorer.

    With several references per sentence, each of `GLEU_DRAWS` draws picks one reference per
    sentence at random and computes corpus GLEU; the score is the mean over draws. The draws use
    the official script's seeds (`random.seed(101 * j)`), so the numbers match it exactly.
    """
    per_example = []
    for hyp, src, refs in zip(predictions, sources, references, strict=True):
        h, s = hyp.split(), src.split()
        per_example.append([_gleu_stats(h, s, ref.split()) for ref in refs])
    total = 0.0
    for draw in range(GLEU_DRAWS):
        rng = random.Random(draw * 101)
        stats = [0] * (2 + 2 * GLEU_ORDER)
        for options in per_example:
            chosen = options[rng.randint(0, len(options) - 1)]
            stats = [a + b for a, b in zip(stats, chosen)]
        total += _gleu_from_stats(stats)
    return total / GLEU_DRAWS


METRICS: dict[str, Metric | CorpusMetric] = {
    **{name: _rouge(name) for name in ROUGE_TYPES},
    "exact_match": exact_match,
    "f1": f1,
    "bleu": CorpusMetric(bleu),
    "chrf": CorpusMetric(chrf),
    "gleu": CorpusMetric(gleu, needs_sources=True),
}


def get_metric(name: str) -> Metric | CorpusMetric:
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
    sources: Sequence[str] | None = None,
) -> dict[str, float]:
    """Each named metric over the examples, each in [0, 1] (see the module docstring).

    Args:
        metric_names: names registered in `METRICS`.
        predictions: one generated text per example.
        references: per example, the reference text or a list of acceptable references.
        sources: per example, the input text (GLEU needs it).

    Raises:
        UserError: an unknown metric name, or a metric that needs sources without them.
        ValueError: predictions and references (or sources) differ in length, or there are none.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if sources is not None and len(sources) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(sources)} sources")
    if not predictions:
        raise ValueError("no predictions to score")
    metrics = {name: get_metric(name) for name in metric_names}
    candidates = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    if any(not refs for refs in candidates):
        raise ValueError("an example has an empty list of references")
    results = {}
    for name, metric in metrics.items():
        if isinstance(metric, CorpusMetric):
            if metric.needs_sources and sources is None:
                raise UserError(f"metric {name} needs the source (input) texts", "pass sources=")
            results[name] = metric.fn(predictions, candidates, sources)
            continue
        total = 0.0
        for prediction, refs in zip(predictions, candidates, strict=True):
            total += max(metric(prediction, ref) for ref in refs)
        results[name] = total / len(predictions)
    return results
