"""Text metrics: bounds, a hand-computed case per metric, multi-reference and name errors."""

import pytest

from tunesmith.errors import UserError
from tunesmith.metrics import METRICS, score

ALL = list(METRICS)


def test_identical_texts_score_one_for_every_metric():
    texts = [
        "Return the sum of two numbers.",
        "Open the file in text mode, read it, and close it.",
    ]
    assert score(ALL, texts, texts) == {name: pytest.approx(1.0) for name in ALL}


def test_disjoint_texts_score_zero_for_every_metric():
    predictions = ["alpha beta gamma", "delta epsilon"]
    references = ["one two three", "four five"]
    assert score(ALL, predictions, references) == {name: 0.0 for name in ALL}


def test_known_small_case():
    # Hand count: 6 tokens each side, 5 unigrams shared (the x2, cat, on, mat) -> P = R = 5/6;
    # bigrams shared: the-cat, on-the, the-mat = 3 of 5; longest common subsequence
    # "the cat on the mat" = 5 of 6. SQuAD F1 drops articles: {cat, sat, on, mat} vs
    # {cat, lay, on, mat} share 3 of 4.
    result = score(ALL, ["the cat sat on the mat"], ["the cat lay on the mat"])
    assert result["rouge1"] == pytest.approx(5 / 6)
    assert result["rouge2"] == pytest.approx(3 / 5)
    assert result["rougeL"] == pytest.approx(5 / 6)
    assert result["rougeLsum"] == pytest.approx(5 / 6)
    assert result["f1"] == pytest.approx(3 / 4)
    assert result["exact_match"] == 0.0


def test_mean_over_examples():
    result = score(["exact_match"], ["a", "b", "c", " d "], ["a", "x", "y", "d"])
    assert result["exact_match"] == pytest.approx(0.5)


def test_rouge_uses_stemming():
    # "Returns"/"returning" stem to "return"; without a stemmer rouge1 would be 1/2.
    assert score(["rouge1"], ["Returns values"], ["returning values"])["rouge1"] == pytest.approx(1)


def test_multiple_references_take_the_best_match():
    result = score(["exact_match", "rougeL"], ["close the file"], [["open it", "close the file"]])
    assert result == {"exact_match": 1.0, "rougeL": pytest.approx(1.0)}


def test_unknown_metric_suggests_a_close_name():
    with pytest.raises(UserError, match="rougel") as info:
        score(["rougel"], ["a"], ["a"])
    assert "rougeL" in info.value.hint


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score(["f1"], ["a", "b"], ["a"])
