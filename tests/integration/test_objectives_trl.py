"""Every objective's loss and gradients equal TRL's own trainer on the same model and batch.

TRL (as pinned in constraints.txt) is the reference implementation: its trainer is built on a copy
of the same tiny model, its own collator turns our token ids into its batch, and its own
`compute_loss` computes the loss that is back-propagated. Nothing of TRL's maths is re-written
here. fp32; loss and every parameter's gradient within 1e-5.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from conftest import build_tiny_model
from tunesmith.data.formats import kto as kto_format
from tunesmith.data.formats import preference
from tunesmith.data.loader import collate
from tunesmith.data.sources import DatasetEntry
from tunesmith.data.tokenize import IGNORE, Limits, encode
from tunesmith.objectives import OBJECTIVES
from tunesmith.objectives.reference import AdapterDisabled, FrozenCopy

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

WORDS = ["one", "two", "three", "four", "hundred", "and", "twenty", "ninety", "seven"]


def pair_records(n: int = 4) -> list[dict]:
    """Pairs whose responses differ in length (so per-token averages and padding matter)."""
    out = []
    for i in range(n):
        chosen = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(2 + i))
        rejected = " ".join(WORDS[(3 * i + k) % len(WORDS)] for k in range(1 + (i * 2) % 5))
        out.append({"prompt": f"Spell {100 + 37 * i}:", "chosen": chosen, "rejected": rejected})
    return out


def encoded_pairs(tokenizer, records):
    entry = DatasetEntry(path="x", format="preference", output_format=" __output__")
    return [encode(tokenizer, preference(r, entry), Limits(), False) for r in records]


def split(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    start = next(i for i, t in enumerate(labels) if t != IGNORE)
    return ids[:start], ids[start:]


def trl_args(cls, tmp_path, **kwargs):
    return cls(
        output_dir=str(tmp_path / "trl"),
        report_to=[],
        per_device_train_batch_size=4,
        use_cpu=True,
        bf16=False,  # transformers 5 defaults to bf16 where the CPU has it; the test is fp32
        **kwargs,
    )


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(ours_loss, ours_grads, trl_loss, trl_grads):
    torch.testing.assert_close(ours_loss, trl_loss, rtol=0, atol=1e-5)
    assert ours_grads.keys() == trl_grads.keys() and ours_grads
    for name in ours_grads:
        torch.testing.assert_close(ours_grads[name], trl_grads[name], rtol=0, atol=1e-5)


def our_loss(objective, model, batch, reference=None):
    sums, metrics = objective.loss(model, batch, reference)
    counts = objective.counts(batch)
    loss = sum(sums[u] / counts[u] for u in sums)
    loss.backward()
    return loss.detach(), metrics


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def lora(model):
    from peft import get_peft_model

    torch.manual_seed(3)
    peft_model = get_peft_model(model, lora_config())
    # B starts at zero (the adapter is the identity); move it so the policy differs from the
    # reference and the log-ratios are not all zero.
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return peft_model


@pytest.mark.parametrize(
    "loss_type,label_smoothing,adapter,sft_weight",
    [
        ("sigmoid", 0.0, False, 0.0),
        ("ipo", 0.0, False, 0.0),
        ("hinge", 0.0, False, 0.0),
        ("robust", 0.2, False, 0.0),
        ("sigmoid", 0.0, True, 0.0),
        ("sigmoid", 0.0, True, 0.7),  # TRL's loss_type [sigmoid, sft] with loss_weights [1, 0.7]
    ],
)
def test_dpo_equals_trl_dpo_trainer(
    tokenizer, tmp_path, loss_type, label_smoothing, adapter, sft_weight
):
    from trl import DPOConfig, DPOTrainer

    records = pair_records()
    pairs = encoded_pairs(tokenizer, records)
    base = build_tiny_model("llama", seed=0).eval()
    policy = build_tiny_model("llama", seed=1).eval()  # differs from the reference
    theirs = copy.deepcopy(policy)
    if adapter:
        # TRL's new-adapter path (peft_config): its reference is the base with adapters disabled.
        # (A PeftModel passed in is taken as a pretrained adapter and copied as the reference.)
        theirs = copy.deepcopy(base)
        policy = lora(base).eval()
        reference = AdapterDisabled()
    else:
        reference = FrozenCopy(base)
    beta = 0.3
    options = OBJECTIVES["dpo"].Options(
        beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, sft_weight=sft_weight
    )
    ours_loss, metrics = our_loss(
        OBJECTIVES["dpo"](options), policy, collate(pairs, tokenizer.pad_token_id, False), reference
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(
            model=theirs,
            ref_model=None if adapter else copy.deepcopy(base).eval(),
            args=trl_args(
                DPOConfig,
                tmp_path,
                beta=beta,
                loss_type=[loss_type, "sft"] if sft_weight else [loss_type],
                loss_weights=[1.0, sft_weight] if sft_weight else None,
                label_smoothing=label_smoothing,
            ),
            train_dataset=datasets.Dataset.from_list(records),
            processing_class=tokenizer,
            peft_config=lora_config() if adapter else None,
        )
    if adapter:  # the same adapter weights as ours
        adapter_weights = {n: p for n, p in policy.named_parameters() if "lora_" in n}
        with torch.no_grad():
            for name, param in trainer.model.named_parameters():
                if "lora_" in name:
                    param.copy_(adapter_weights[name])
    features = []
    for e in pairs:
        prompt, chosen = split(e.input_ids, e.labels)
        _, rejected = split(e.rejected_ids, e.rejected_labels)
        features.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    inputs = trainer.data_collator(features)
    trl_model = trainer.model.eval()
    trl_loss = trainer.compute_loss(trl_model, inputs)
    trl_loss.backward()
    assert_same(ours_loss, grads_of(policy), trl_loss.detach(), grads_of(trl_model))
    # The logged rewards are TRL's too.
    logged = trainer._metrics["eval"]  # the model is in eval mode (no dropout noise)
    n = metrics["reward_margin"][1]
    assert abs(float(metrics["reward_margin"][0] / n) - logged["rewards/margins"][-1]) < 1e-5
    assert abs(float(metrics["reward_accuracy"][0] / n) - logged["rewards/accuracies"][-1]) < 1e-6


def paired_features(pairs, with_prompt=True):
    """TRL's tokenize_row output for the experimental (ORPO, CPO) trainers, from our ids."""
    out = []
    for e in pairs:
        prompt, _ = split(e.input_ids, e.labels)
        row = {}
        for side, ids, labels in (
            ("chosen", e.input_ids, e.labels),
            ("rejected", e.rejected_ids, e.rejected_labels),
        ):
            row[f"{side}_input_ids"] = ids
            row[f"{side}_attention_mask"] = [1] * len(ids)
            row[f"{side}_labels"] = labels
        if with_prompt:
            row["prompt_input_ids"] = prompt
            row["prompt_attention_mask"] = [1] * len(prompt)
        out.append(row)
    return out


def test_orpo_equals_trl_orpo_trainer(tokenizer, tmp_path):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    records = pair_records()
    pairs = encoded_pairs(tokenizer, records)
    policy = build_tiny_model("llama", seed=1).eval()
    theirs = copy.deepcopy(policy)
    options = OBJECTIVES["orpo"].Options(lambda_=0.25)
    ours_loss, _ = our_loss(
        OBJECTIVES["orpo"](options), policy, collate(pairs, tokenizer.pad_token_id, False)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = ORPOTrainer(
            model=theirs,
            args=trl_args(ORPOConfig, tmp_path, beta=0.25),
            train_dataset=datasets.Dataset.from_list(records),
            processing_class=tokenizer,
        )
    inputs = trainer.data_collator(paired_features(pairs))
    trl_loss = trainer.compute_loss(theirs, inputs)
    trl_loss.backward()
    assert_same(ours_loss, grads_of(policy), trl_loss.detach(), grads_of(theirs))


def test_simpo_equals_trl_cpo_trainer(tokenizer, tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    records = pair_records()
    pairs = encoded_pairs(tokenizer, records)
    policy = build_tiny_model("llama", seed=1).eval()
    theirs = copy.deepcopy(policy)
    options = OBJECTIVES["simpo"].Options(beta=2.0, gamma=0.7, label_smoothing=0.1)
    ours_loss, _ = our_loss(
        OBJECTIVES["simpo"](options), policy, collate(pairs, tokenizer.pad_token_id, False)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = CPOTrainer(
            model=theirs,
            args=trl_args(
                CPOConfig,
                tmp_path,
                loss_type="simpo",
                beta=2.0,
                simpo_gamma=0.7,
                label_smoothing=0.1,
                cpo_alpha=0.0,
            ),
            train_dataset=datasets.Dataset.from_list(records),
            processing_class=tokenizer,
        )
    inputs = trainer.data_collator(paired_features(pairs))
    trl_loss = trainer.compute_loss(theirs, inputs)
    trl_loss.backward()
    assert_same(ours_loss, grads_of(policy), trl_loss.detach(), grads_of(theirs))


def test_kto_equals_trl_kto_trainer(tokenizer, tmp_path):
    from trl import KTOConfig, KTOTrainer

    records = [
        {
            "prompt": r["prompt"],
            "completion": r["chosen" if i % 3 else "rejected"],
            "label": bool(i % 3),
        }
        for i, r in enumerate(pair_records(6))
    ]
    entry = DatasetEntry(path="x", format="kto", output_format=" __output__")
    examples = [encode(tokenizer, kto_format(r, entry), Limits(), False) for r in records]
    base = build_tiny_model("llama", seed=0).eval()
    policy = build_tiny_model("llama", seed=1).eval()
    theirs = copy.deepcopy(policy)
    options = OBJECTIVES["kto"].Options(beta=0.2, desirable_weight=1.5, undesirable_weight=0.8)
    batch = collate(examples, tokenizer.pad_token_id, False)
    ours_loss, _ = our_loss(OBJECTIVES["kto"](options), policy, batch, FrozenCopy(base))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = KTOTrainer(
            model=theirs,
            ref_model=copy.deepcopy(base).eval(),
            args=KTOConfig(
                output_dir=str(tmp_path / "trl"),
                report_to=[],
                per_device_train_batch_size=len(records),
                use_cpu=True,
                bf16=False,
                beta=0.2,
                desirable_weight=1.5,
                undesirable_weight=0.8,
            ),
            train_dataset=datasets.Dataset.from_list(records),
            processing_class=tokenizer,
        )
    parts = [split(e.input_ids, e.labels) for e in examples]
    completions = [c for _, c in parts]
    rotated = completions[-1:] + completions[:-1]  # TRL's own KL pairing (add_kl_completion_ids)
    features = [
        {"prompt_ids": p, "completion_ids": c, "KL_completion_ids": k, "label": r["label"]}
        for (p, c), k, r in zip(parts, rotated, records)
    ]
    inputs = trainer.data_collator(features)
    trl_model = trainer.model.eval()
    trl_loss = trainer.compute_loss(trl_model, inputs)
    trl_loss.backward()
    assert_same(ours_loss, grads_of(policy), trl_loss.detach(), grads_of(trl_model))


def test_reward_equals_trl_reward_trainer(tokenizer, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from conftest import tiny_config

    records = pair_records()
    pairs = encoded_pairs(tokenizer, records)
    cfg = tiny_config("llama")
    config = AutoConfig.for_model(cfg.pop("model_type"), num_labels=1, **cfg)
    torch.manual_seed(1)
    policy = AutoModelForSequenceClassification.from_config(config).eval()
    theirs = copy.deepcopy(policy)
    options = OBJECTIVES["reward"].Options(center_rewards_coefficient=0.01)
    ours_loss, _ = our_loss(
        OBJECTIVES["reward"](options), policy, collate(pairs, tokenizer.pad_token_id, False)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RewardTrainer(
            model=theirs,
            args=trl_args(RewardConfig, tmp_path, center_rewards_coefficient=0.01),
            train_dataset=datasets.Dataset.from_list(records),
            processing_class=tokenizer,
        )
    features = [{"chosen_ids": e.input_ids, "rejected_ids": e.rejected_ids} for e in pairs]
    inputs = trainer.data_collator(features)
    trl_model = trainer.model.eval()
    trl_loss = trainer.compute_loss(trl_model, inputs)
    trl_loss.backward()
    assert_same(ours_loss, grads_of(policy), trl_loss.detach(), grads_of(trl_model))
