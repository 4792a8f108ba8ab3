"""Text metrics: bounds, a hand-computed case per metric, multi-reference, JFLEG's published
GLEU baselines and name errors."""

import math

import pytest

from tunesmith.data.sources import read_records
from tunesmith.errors import UserError
from tunesmith.metrics import METRICS, score

ALL = list(METRICS)


def test_identical_texts_score_one_for_every_metric():
    texts = [
        "Return the sum of two numbers.",
        "Open the file in text mode, read it, and close it.",
    ]
    expected = {name: pytest.approx(1.0) for name in ALL}
    assert score(ALL, texts, texts, sources=texts) == expected


def test_disjoint_texts_score_zero_for_every_metric():
    # No shared character either, so chrF's character n-grams find nothing too.
    predictions = ["abc def ghi", "jkl mno"]
    references = ["pqr stu vwx", "yz"]
    assert score(ALL, predictions, references, sources=predictions) == {name: 0.0 for name in ALL}


def test_known_small_case():
    # Hand count: 6 tokens each side, 5 unigrams shared (the x2, cat, on, mat) -> P = R = 5/6;
    # bigrams shared: the-cat, on-the, the-mat = 3 of 5; longest common subsequence
    # "the cat on the mat" = 5 of 6. SQuAD F1 drops articles: {cat, sat, on, mat} vs
    # {cat, lay, on, mat} share 3 of 4.
    names = ["rouge1", "rouge2", "rougeL", "rougeLsum", "f1", "exact_match"]
    result = score(names, ["the cat sat on the mat"], ["the cat lay on the mat"])
    assert result["rouge1"] == pytest.approx(5 / 6)
    assert result["rouge2"] == pytest.approx(3 / 5)
    assert result["rougeL"] == pytest.approx(5 / 6)
    assert result["rougeLsum"] == pytest.approx(5 / 6)
    assert result["f1"] == pytest.approx(3 / 4)
    assert result["exact_match"] == 0.0


SOURCE = "he go to the big school by bus every day"
CORRECTED = "he goes to the big school by bus every day"


def test_bleu_and_gleu_by_hand():
    # Copying the source against the corrected reference. BLEU's clipped n-gram precisions:
    # 9/10, 7/9, 6/8, 5/7 (only n-grams through "go" miss), equal lengths (no brevity penalty).
    # GLEU also subtracts the source n-grams the reference changed that the hypothesis kept
    # ("go"; "he go", "go to"; ...: 1, 2, 2, 2): 8/10, 5/9, 4/8, 3/7.
    result = score(["bleu", "gleu"], [SOURCE], [CORRECTED], sources=[SOURCE])
    assert result["bleu"] == pytest.approx(math.prod([9 / 10, 7 / 9, 6 / 8, 5 / 7]) ** 0.25)
    assert result["gleu"] == pytest.approx(math.prod([8 / 10, 5 / 9, 4 / 8, 3 / 7]) ** 0.25)
    # The correction itself scores 1; GLEU ranks it above the copy, as it must.
    assert score(["gleu"], [CORRECTED], [CORRECTED], sources=[SOURCE])["gleu"] == 1.0


def test_every_metric_accepts_several_references():
    prediction, wrong = "close the file now", "open a window first please"
    single = score(ALL, [prediction], [[prediction]], sources=[prediction])
    both = score(ALL, [prediction], [[wrong, prediction]], sources=[prediction])
    for name in ALL:
        if name == "gleu":  # the mean over random draws of one reference: half draw the wrong one
            assert 0 < both[name] < single[name] == 1.0
        else:  # the best reference (or, for BLEU, all at once) finds the exact match
            assert both[name] == pytest.approx(single[name]) == pytest.approx(1.0), name


def test_bleu_counts_all_references_at_once():
    # "the cat sat" matches ref A's first half and ref B's second half: together they cover more
    # n-grams than either alone, which only corpus BLEU's per-n-gram max over references sees.
    pred = ["the cat sat on the mat today"]
    a, b = "the cat sat on a rug", "a dog lay on the mat today"
    joint = score(["bleu"], pred, [[a, b]])["bleu"]
    assert joint > max(score(["bleu"], pred, [a])["bleu"], score(["bleu"], pred, [b])["bleu"])


def test_gleu_needs_sources():
    with pytest.raises(UserError, match="gleu needs the source"):
        score(["gleu"], ["a b"], ["a b"])


@pytest.mark.parametrize("split, published", [("test", 0.405), ("dev", 0.382)])
def test_copying_jfleg_sources_scores_the_published_gleu(shared_data, split, published):
    # JFLEG's published "no change" baselines (Napoles et al., 2017): GLEU 40.5 test, 38.2 dev.
    records = read_records(str(shared_data / "jfleg" / split), split)
    sources = [r["input"] for r in records]
    references = [r["references"] for r in records]
    assert all(len(refs) == 4 for refs in references)
    result = score(["gleu"], sources, references, sources=sources)
    assert round(result["gleu"], 3) == published


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
