"""Preference data: pair and KTO formats, their errors, truncation, collation and the cache."""

from __future__ import annotations

import pytest

from tunesmith.config import load_config
from tunesmith.data.cache import cached_splits
from tunesmith.data.formats import kto, preference
from tunesmith.data.loader import collate
from tunesmith.data.sources import DatasetEntry
from tunesmith.data.tokenize import IGNORE, Limits, encode
from tunesmith.errors import UserError

ENTRY = DatasetEntry(path="x", format="preference", input_format="Q: __input__\nA:")


def record(**values):
    return {
        "prompt": "spell 12",
        "chosen": " twelve",
        "rejected": " twenty",
        "_source": "p.jsonl:3",
        **values,
    }


@pytest.mark.parametrize(
    "values,message",
    [
        ({"chosen": "  "}, "p.jsonl:3: empty 'chosen' response"),
        ({"rejected": " twelve"}, "p.jsonl:3: 'chosen' equals 'rejected'"),
        ({"rejected": None}, "p.jsonl:3: missing field 'rejected'"),
    ],
)
def test_bad_pairs_are_one_line_errors_naming_file_and_line(values, message):
    with pytest.raises(UserError) as caught:
        preference(record(**values), ENTRY)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_field_mapping_applies_to_pairs():
    entry = DatasetEntry(
        path="x", format="preference", fields={"chosen": "good", "rejected": "bad"}
    )
    ex = preference({"prompt": "p", "good": "a", "bad": "b"}, entry)
    assert (ex.answer, ex.rejected) == ("a", "b")


def test_pair_labels_score_only_the_responses(tokenizer):
    encoded = encode(tokenizer, preference(record(), ENTRY), Limits(), False)
    prompt = tokenizer("Q: spell 12\nA:")["input_ids"]
    for ids, labels, text in (
        (encoded.input_ids, encoded.labels, " twelve"),
        (encoded.rejected_ids, encoded.rejected_labels, " twenty"),
    ):
        assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE] * len(prompt)
        scored = [t for t in labels if t != IGNORE]
        assert scored[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(scored[:-1]) == text


def test_truncation_cuts_the_prompt_first_and_keeps_both_responses(tokenizer):
    long = record(prompt="word " * 80, chosen=" one two three", rejected=" four five six seven")
    full = encode(tokenizer, preference(long, ENTRY), Limits(), False)
    cut = encode(tokenizer, preference(long, ENTRY), Limits(cutoff_len=40), False)
    assert cut.truncated and max(len(cut.input_ids), len(cut.rejected_ids)) <= 40
    for side in ("labels", "rejected_labels"):
        kept = [t for t in getattr(cut, side) if t != IGNORE]
        assert kept == [t for t in getattr(full, side) if t != IGNORE]  # responses intact
    # The template's cue after the input survives (the input was cut, not the template).
    assert tokenizer.decode(cut.input_ids).split(" one")[0].endswith("A:")


def test_pairs_collate_chosen_rows_then_rejected_rows(tokenizer):
    pairs = [
        encode(tokenizer, preference(record(chosen=c), ENTRY), Limits(), False)
        for c in (" a", " b c d")
    ]
    batch = collate(pairs, tokenizer.pad_token_id, False)
    assert batch["input_ids"].shape[0] == 4
    assert batch["input_ids"][0, : len(pairs[0].input_ids)].tolist() == pairs[0].input_ids
    assert batch["input_ids"][3, : len(pairs[1].rejected_ids)].tolist() == pairs[1].rejected_ids


def test_kto_records_and_their_mismatched_kl_rows(tokenizer):
    entry = DatasetEntry(path="x", format="kto")
    rows = [{"prompt": f"p{i}", "completion": f" c{i}", "label": i % 2 == 0} for i in range(3)]
    encoded = [encode(tokenizer, kto(r, entry), Limits(), False) for r in rows]
    assert [e.desirable for e in encoded] == [True, False, True]
    batch = collate(encoded, tokenizer.pad_token_id, False)
    assert batch["desirable"].tolist() == [1, 0, 1]
    # KL row i pairs prompt i with completion i - 1 (TRL's rotation).
    kl0 = [t for t in batch["kl_input_ids"][0].tolist() if t != tokenizer.pad_token_id]
    assert tokenizer.decode(kl0).replace("</s>", "").strip().split()[0] == "p0"
    assert "c2" in tokenizer.decode(kl0)
    with pytest.raises(UserError, match="'label' must be true or false"):
        kto({"prompt": "p", "completion": "c", "label": "maybe"}, entry)


def test_chat_pairs_render_with_the_chat_template(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    rec = {
        "prompt": [{"role": "user", "content": "spell 3"}],
        "chosen": [{"role": "assistant", "content": "three"}],
        "rejected": [{"role": "assistant", "content": "four"}],
    }
    encoded = encode(tokenizer, preference(rec, ENTRY), Limits(), False)
    scored = tokenizer.decode([t for t in encoded.labels if t != IGNORE])
    context = tokenizer.decode(
        [t for t, lab in zip(encoded.input_ids, encoded.labels) if lab == IGNORE]
    )
    assert "three" in scored and "user" not in scored
    assert context.endswith("<|assistant|>")


def test_pairs_round_trip_through_the_cache(tokenizer, tmp_path):
    pairs = [
        encode(tokenizer, preference(record(chosen=c), ENTRY), Limits(), False)
        for c in (" a", " b c")
    ]
    built, hit = cached_splits(tmp_path, "k", lambda: {"train": (pairs, {"examples": 2})})
    loaded, hit = cached_splits(tmp_path, "k", lambda: pytest.fail("rebuilt"))
    assert hit
    for a, b in zip(pairs, loaded["train"][0]):
        assert (a.input_ids, a.labels, a.rejected_ids, a.rejected_labels) == (
            b.input_ids,
            b.labels,
            b.rejected_ids,
            b.rejected_labels,
        )


def test_objective_is_a_tagged_union_with_its_own_keys(tmp_path):
    cfg = load_config(None, ["objective.name=orpo", "objective.lambda=0.3"])
    assert cfg.objective.lambda_ == 0.3
    assert load_config(None, []).objective.name == "sft"
    with pytest.raises(UserError, match="unknown key 'objective.beta'"):
        load_config(None, ["objective.name=orpo", "objective.beta=0.1"])
    with pytest.raises(UserError, match="loss_type=robust"):
        load_config(None, ["objective.name=dpo", "objective.label_smoothing=0.1"])


def test_objective_on_the_wrong_kind_of_data_is_refused(tmp_path):
    from conftest import run_overrides
    from tunesmith.train.loop import train

    with pytest.raises(UserError, match="objective.name=dpo trains on data.format=preference"):
        train(
            load_config(
                None, run_overrides(tmp_path, **{"objective.name": "dpo", "method.name": "lora"})
            )
        )


def test_packing_with_a_preference_objective_is_refused_before_loading(tmp_path):
    from conftest import preference_overrides
    from tunesmith.train.loop import train

    argv = preference_overrides(tmp_path, **{"data.packing": True, "data.max_seq_len": 64})
    with pytest.raises(UserError, match="scores whole responses: set data.packing=false"):
        train(load_config(None, argv))


def test_a_reference_copy_with_zero3_init_is_refused_before_loading(tmp_path):
    """ZeRO-3 with zero3_init builds the policy partitioned: no whole model to copy. Without
    zero3_init, or with precomputed log-probs, the configuration passes the checks."""
    from conftest import preference_overrides
    from tunesmith.compat import objective_refusals
    from tunesmith.methods import METHODS

    zero3 = {"strategy.name": "deepspeed", "strategy.stage": 3}
    capabilities = METHODS["full"].capabilities

    def refusals(**extra):
        cfg = load_config(None, preference_overrides(tmp_path, "full", **zero3, **extra))
        return objective_refusals(cfg, capabilities, encoder_decoder=False)

    assert refusals() == [] and refusals(**{"objective.precompute_reference": True}) == []
    (refused,) = refusals(**{"strategy.zero3_init": True})
    assert "objective.precompute_reference=true, strategy.zero3_init=false" in refused


def test_data_preview_shows_a_pair_with_both_loss_masks(tmp_path):
    from conftest import preference_overrides
    from tunesmith.data.preview import preview_text
    from tunesmith.models.load import load_tokenizer

    cfg = load_config(None, preference_overrides(tmp_path))
    text = preview_text(cfg, load_tokenizer(cfg.model), False, 1)
    chosen = next(line for line in text.splitlines() if line.startswith("chosen:"))
    rejected = next(line for line in text.splitlines() if line.startswith("rejected:"))
    assert "⟦" in chosen and "⟦" in rejected
    # The same untrained prompt before both responses.
    assert (
        chosen.split("⟦")[0].split(":", 1)[1].strip()
        == rejected.split("⟦")[0].split(":", 1)[1].strip()
    )
