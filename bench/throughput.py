"""Training throughput: tunesmith against Hugging Face Trainer, TRL SFTTrainer and a plain loop.

    python bench/throughput.py            # full run: every system, ~20 min on 2 idle cores
    python bench/throughput.py --quick    # smoke run: tiny model, 5 systems (~2 min, warm cache)
    python bench/throughput.py --systems tunesmith-fp32,hf-trainer-fp32 --steps 8 --batch-size 2
    python bench/throughput.py --cuda --model-config bench/configs/gpu_360m.json  # on a GPU

Most of a quick run is starting interpreters (transformers, TRL) and, on a cold inductor cache,
compiling; at load 8 on 2 cores every figure above grows 3-5x.

The limit, measured in the same run: the bf16 and fp32 matmul peak with the same thread count, on
GEMMs of the model's own shapes (`peak_flops`), and per system the model FLOPs utilisation
`mfu` = model FLOPs per token x real tokens/s / peak of the system's precision. Model FLOPs per
token follow PaLM (appendix B): 6 x non-embedding parameters + 6 x hidden x vocab (the LM head)
+ 12 x layers x hidden x context, with context the token-weighted mean example length (each
example attends within itself). They count the head on every token, so computing it only on
target positions (tunesmith) shows up as a higher MFU, as any saved work does.

Compiled systems (`*-compiled-*`) start from an empty inductor cache made for this run (cold);
`tunesmith-compiled-bf16-warm` reruns the first compiled system on that now-filled cache, so
its `compile_seconds` is what a second run of the same recipe pays.

Every system trains the same model (a Llama built from a config, same seed so the same initial
weights) on the same data (Alpaca demo, cut to `cutoff_len` tokens), with the same batch size,
steps, learning-rate schedule, AdamW settings and gradient clipping, in its own subprocess (so
peak RSS is per system). tunesmith, HF Trainer and the plain loop see the very same batches in the
same order (tunesmith's tokenisation and order), so their fp32 losses should agree closely; TRL
tokenises the same prompt/answer pairs itself.

Timings come from `_harness.StepProbe` (torch optimizer-step hooks and a wrapper around the model
class's forward), identical for every system. Reported per system: median step time, real
(non-padding) tokens/s, real tokens per CPU-second (less sensitive to other processes on the
machine), padding share, peak RSS, final train loss (each system's own last logged window), and
tokens/s as a ratio to tunesmith at the same precision, all measured in the same run. Results go
to bench/results/throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    SHARED_DATA,
    StepProbe,
    default_tokenizer,
    load_average,
    machine,
    markdown_table,
    peak_rss_bytes,
    rss_bytes,
    run_isolated,
    write_results,
)
from _limits import attended_context, flops_per_token, matmul_peak  # noqa: E402

ALPACA = SHARED_DATA / "alpaca" / "alpaca_en_demo.json"


@dataclass
class Spec:
    """Everything the systems share. The model dict is an HF LlamaConfig without model_type."""

    model: dict
    tokenizer: str
    tokenizer_label: str
    data: str
    steps: int
    batch_size: int
    cutoff_len: int
    lr: float
    seed: int
    loss_window: int  # final loss = mean of the per-step losses of the last this many steps
    warmup_steps_excluded: int  # first steps left out of the timing (allocator, caches, threads)
    cuda: bool = False  # train on the GPU (every system), else on the CPU
    inductor_cache: str = ""  # this run's cold cache for the compiled systems


def llama(vocab: int, hidden: int, layers: int, heads: int, inter: int, tokenizer: Any) -> dict:
    """An HF Llama config dict whose special ids match the tokenizer."""
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": inter,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def make_spec(
    quick: bool,
    tokenizer_path: str | None,
    model_config: str | None = None,
    data: str | None = None,
) -> Spec:
    """The full setting (a ~33M-parameter Llama with the SmolLM2 vocabulary), the quick one, or
    a model from a JSON file of LlamaConfig keys (its vocab_size kept when it is the larger)."""
    from transformers import AutoTokenizer

    from tunesmith.models.load import ensure_pad_token

    if tokenizer_path:
        path, label = Path(tokenizer_path), tokenizer_path
    else:
        path, label = default_tokenizer()
    tok = AutoTokenizer.from_pretrained(str(path))
    ensure_pad_token(tok)
    vocab = len(tok)
    if model_config:
        model = llama(vocab, 64, 2, 4, 176, tok)
        model.update(json.loads(Path(model_config).read_text(encoding="utf-8")))
        model["vocab_size"] = max(model["vocab_size"], vocab)
        return Spec(model, str(path), label, data or str(ALPACA), 12, 8, 512, 3e-4, 0, 3, 4)
    if quick:
        model = llama(vocab, 64, 2, 4, 176, tok)
        return Spec(model, str(path), label, str(ALPACA), 8, 4, 128, 1e-3, 0, 3, 2)
    # hidden 384, 8 layers, 6 heads: 14.2M parameters in the blocks plus the tied embedding
    # (18.9M with SmolLM2's 49,152 tokens), so the output projection is a real share of the
    # work, as in small released models.
    model = llama(vocab, 384, 8, 6, 1024, tok)
    return Spec(model, str(path), label, data or str(ALPACA), 12, 4, 256, 5e-4, 0, 3, 3)


# ---------------------------------------------------------------- systems

# name -> (runner, precision, packing, compiled)
SYSTEMS: dict[str, tuple[str, str, bool, bool]] = {
    "tunesmith-fp32": ("tunesmith", "fp32", False, False),
    "hf-trainer-fp32": ("hf_trainer", "fp32", False, False),
    "torch-loop-fp32": ("torch_loop", "fp32", False, False),
    "tunesmith-bf16": ("tunesmith", "bf16-mixed", False, False),
    "hf-trainer-bf16": ("hf_trainer", "bf16-mixed", False, False),
    "torch-loop-bf16": ("torch_loop", "bf16-mixed", False, False),
    "trl-padding-bf16": ("trl", "bf16-mixed", False, False),
    "trl-packing-bf16": ("trl", "bf16-mixed", True, False),
    "tunesmith-packing-bf16": ("tunesmith", "bf16-mixed", True, False),
    # Compiled: tunesmith's train.compile (padded batches to multiples of 64; packed rows fixed),
    # HF Trainer's torch_compile=True and a plain loop with torch.compile(model).
    "tunesmith-compiled-bf16": ("tunesmith", "bf16-mixed", False, True),
    "tunesmith-packing-compiled-bf16": ("tunesmith", "bf16-mixed", True, True),
    "hf-trainer-compiled-bf16": ("hf_trainer", "bf16-mixed", False, True),
    "torch-loop-compiled-bf16": ("torch_loop", "bf16-mixed", False, True),
    "tunesmith-compiled-bf16-warm": ("tunesmith", "bf16-mixed", False, True),
}
BASELINE = {"fp32": "tunesmith-fp32", "bf16-mixed": "tunesmith-bf16"}
QUICK_SYSTEMS = [
    "tunesmith-fp32",
    "hf-trainer-fp32",
    "tunesmith-bf16",
    "tunesmith-compiled-bf16",
    "tunesmith-packing-compiled-bf16",
]


def tunesmith_overrides(
    spec: Spec, precision: str, packing: bool, out_dir: str, compiled: bool = False
) -> list[str]:
    """The key=value overrides of a tunesmith run of this spec (see `tunesmith config --explain`)."""
    items = ["model.config.model_type=llama"]
    items += [f"model.config.{k}={json.dumps(v)}" for k, v in spec.model.items()]
    items += [
        f"model.tokenizer={spec.tokenizer}",
        f"data.train={spec.data}",
        "data.format=alpaca",
        f"data.cutoff_len={spec.cutoff_len}",
        f"train.max_steps={spec.steps}",
        f"train.batch_size={spec.batch_size}",
        f"train.lr={spec.lr}",
        "train.lr_schedule=cosine",
        "train.warmup_steps=0",
        "train.max_grad_norm=1.0",
        f"train.precision={precision}",
        f"train.compile={str(compiled).lower()}",  # never auto: each system is what it says
        f"strategy.device={'cuda' if spec.cuda else 'cpu'}",
        "train.log_every=1",  # a loss per step, like every other system here
        "eval.run_validation=false",
        "eval.eval_before_train=false",
        "checkpoint.save_model=false",
        "tracking.plot=false",
        f"output_dir={out_dir}",
        f"seed={spec.seed}",
    ]
    if packing:
        items += ["data.packing=true", f"data.max_seq_len={spec.cutoff_len}"]
    return items


def build_model(spec: Spec, precision: str) -> Any:
    """The spec's model, initialised exactly as tunesmith does it (seed, then from_config)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    config = AutoConfig.for_model("llama", **spec.model)
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.config.use_cache = False
    return model


def tunesmith_data(spec: Spec, precision: str, out_dir: str) -> tuple[Any, Any, list[Any]]:
    """tunesmith's tokenizer and batches, and its examples in the order its loader serves them.

    The order is read back from the loader's own batches (not from its internals), so HF
    Trainer and TRL see the same examples in the same steps as tunesmith.
    """
    import tunesmith
    from tunesmith.data.loader import build_dataloaders, load_examples
    from tunesmith.models.load import load_tokenizer

    cfg = tunesmith.load_config(None, tunesmith_overrides(spec, precision, False, out_dir))
    tokenizer = load_tokenizer(cfg.model)
    encoded = build_dataloaders(cfg, tokenizer, 0, 1, False).train.units
    formatted = load_examples(cfg, "train")
    if len(formatted) != len(encoded):
        raise RuntimeError(f"{len(formatted)} formatted vs {len(encoded)} encoded examples")
    where: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(encoded):
        where.setdefault(tuple(e.input_ids), []).append(i)
    served = build_dataloaders(cfg, tokenizer, 0, 1, False).train
    order: list[int] = []
    for _ in range(spec.steps):
        batch = served.next_batch()
        for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
            order.append(where[tuple(i for i, m in zip(ids, mask) if m)].pop(0))
    order += sorted(set(range(len(encoded))) - set(order))  # more for packing, in file order
    batches = build_dataloaders(cfg, tokenizer, 0, 1, False)
    return tokenizer, batches, [(formatted[i], encoded[i]) for i in order]


def run_tunesmith(
    spec: Spec, precision: str, packing: bool, tmp: str, compiled: bool
) -> dict[str, Any]:
    import tunesmith

    overrides = tunesmith_overrides(spec, precision, packing, f"{tmp}/run", compiled)
    summary = tunesmith.train(tunesmith.load_config(None, overrides))
    lines = Path(f"{tmp}/run/metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return {
        "losses": [row["loss"] for row in rows if "loss" in row],
        "self_reported_tokens_per_s": summary["tokens_per_s"],
        "tunesmith_compile": summary["compile"],
    }


def trainer_args(spec: Spec, precision: str, tmp: str, compiled: bool = False) -> dict[str, Any]:
    """TrainingArguments shared by HF Trainer and TRL: the same schedule, optimizer and order."""
    return {
        "output_dir": f"{tmp}/run",
        "max_steps": spec.steps,
        "per_device_train_batch_size": spec.batch_size,
        "learning_rate": spec.lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not spec.cuda,
        "torch_compile": compiled,
        "bf16": precision == "bf16-mixed",
        "seed": spec.seed,
        "train_sampling_strategy": "sequential",  # the order is tunesmith's, set by the dataset
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def logged_losses(trainer: Any) -> list[float]:
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def run_hf_trainer(
    spec: Spec, precision: str, packing: bool, tmp: str, compiled: bool
) -> dict[str, Any]:
    import datasets
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer, _, ordered = tunesmith_data(spec, precision, f"{tmp}/data")
    train = datasets.Dataset.from_list(
        [{"input_ids": e.input_ids, "labels": e.labels} for _, e in ordered]
    )
    trainer = Trainer(
        model=build_model(spec, precision),
        args=TrainingArguments(**trainer_args(spec, precision, tmp, compiled)),
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
    )
    trainer.train()
    return {"losses": logged_losses(trainer), "optimizer": str(trainer.args.optim)}


def run_trl(spec: Spec, precision: str, packing: bool, tmp: str, compiled: bool) -> dict[str, Any]:
    import datasets
    from trl import SFTConfig, SFTTrainer

    tokenizer, _, ordered = tunesmith_data(spec, precision, f"{tmp}/data")
    train = datasets.Dataset.from_list(
        [{"prompt": ex.prompt, "completion": ex.answer} for ex, _ in ordered]
    )
    args = SFTConfig(
        **trainer_args(spec, precision, tmp, compiled),
        max_length=spec.cutoff_len,
        packing=packing,  # packing_strategy stays TRL's default (bfd, padding-free)
        # TRL turns activation checkpointing on by default; off here, as in every other system,
        # so all of them do the same arithmetic.
        gradient_checkpointing=False,
    )
    trainer = SFTTrainer(
        model=build_model(spec, precision),
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
    )
    trainer.train()
    return {"losses": logged_losses(trainer), "optimizer": str(trainer.args.optim)}


def run_torch_loop(
    spec: Spec, precision: str, packing: bool, tmp: str, compiled: bool
) -> dict[str, Any]:
    """The plainest loop: HF loss from labels, AdamW, clipping, cosine schedule. The floor.
    Compiled: torch.compile of the whole model (recompiles as lengths change: dynamo marks the
    length dynamic at the second one)."""
    import contextlib
    import math

    import torch

    _, bundle, _ = tunesmith_data(spec, precision, f"{tmp}/data")
    device = torch.device("cuda" if spec.cuda else "cpu")
    model = build_model(spec, precision).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    forward = torch.compile(model) if compiled else model
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / spec.steps, 1.0)))
    )
    losses = []
    for _ in range(spec.steps):
        batch = {k: v.to(device) for k, v in bundle.train.next_batch().items()}
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16-mixed"
            else contextlib.nullcontext()
        )
        with autocast:
            loss = forward(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # one sync per step, as every other system has
    return {"losses": losses}


RUNNERS = {
    "tunesmith": run_tunesmith,
    "hf_trainer": run_hf_trainer,
    "trl": run_trl,
    "torch_loop": run_torch_loop,
}


def limits_worker(spec: Spec, out: Path, tmp: str, quick: bool) -> None:
    """The run's limit, in a process like the systems' (same threads): matmul peak of the
    model's GEMM shapes, and model FLOPs per token on this data."""
    import tunesmith
    from tunesmith.data.loader import build_dataloaders
    from tunesmith.models.load import load_tokenizer

    cfg = tunesmith.load_config(None, tunesmith_overrides(spec, "fp32", False, f"{tmp}/run"))
    examples = build_dataloaders(cfg, load_tokenizer(cfg.model), 0, 1, False).train.examples
    context = attended_context([len(e.input_ids) for e in examples])
    tokens = spec.batch_size * spec.cutoff_len
    peak = matmul_peak(spec.model, tokens, "cuda" if spec.cuda else "cpu", 0.1 if quick else 0.5)
    result = {"peak": peak, "flops_per_token": flops_per_token(spec.model, context)}
    result["load"] = load_average()
    out.write_text(json.dumps(result))


def add_mfu(results: dict[str, dict[str, Any]], limits: dict[str, Any]) -> None:
    """MFU of each system: model FLOPs per token x real tokens/s / the peak of its precision."""
    per_token = limits["flops_per_token"]["total"]
    for r in results.values():
        if "error" in r:
            continue
        peak = limits["peak"]["fp32" if r["precision"] == "fp32" else "bf16"]
        r["model_flops_per_s"] = per_token * r["real_tokens_per_s"]
        r["mfu"] = r["model_flops_per_s"] / peak


def profile_worker(system: str, spec: Spec, out: Path, tmp: str) -> None:
    """Run one system under the torch profiler and write where its step time goes to `out`."""
    import os

    runner, precision, packing, compiled = SYSTEMS[system]
    if compiled and spec.inductor_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = spec.inductor_cache
    from _profile import StepBreakdown

    from tunesmith.train.compile import CompileStats

    skip = spec.warmup_steps_excluded + 1  # past the compile and the allocator's first steps
    dynamo = CompileStats.begin()
    with StepBreakdown(spec.model["vocab_size"], skip, spec.steps - skip - 2) as breakdown:
        RUNNERS[runner](spec, precision, packing, tmp, compiled)
    result = {"system": system, **breakdown.result(), "dynamo": dynamo.result()}
    out.write_text(json.dumps(result))


def profile_table(profile: dict[str, Any]) -> str:
    """The profiled system's step time by category, largest first."""
    share, seconds = profile["share"], profile["seconds_per_step"]
    rows = [
        [name, f"{seconds[name]:.3f}", f"{100 * share[name]:.1f}%"]
        for name in sorted(share, key=share.get, reverse=True)
    ]
    table = markdown_table(["where the step time goes", "s per step", "share"], rows)
    top = profile.get("top_other_aten_ops") or {}
    if not top:
        return table
    ops = ", ".join(f"{op.removeprefix('aten::')} {seconds:.3f}" for op, seconds in top.items())
    return f"{table}\n\nLargest of the other aten ops (s per step): {ops}."


def worker(system: str, spec: Spec, out: Path, tmp: str) -> None:
    """Run one system in this process and write its measurements to `out`."""
    import os

    runner, precision, packing, compiled = SYSTEMS[system]
    if compiled and spec.inductor_cache:  # before torch reads it
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = spec.inductor_cache
    import torch
    from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel

    from tunesmith.train.compile import CompileStats

    probe = StepProbe(sync_cuda=spec.cuda)
    probe.install([LlamaForCausalLM, LlamaModel])
    load_before = load_average()
    rss_start = rss_bytes()
    dynamo = CompileStats.begin()
    started = time.perf_counter()
    extra = RUNNERS[runner](spec, precision, packing, tmp, compiled)
    extra["dynamo"] = dynamo.result()  # graphs, recompiles, compile seconds (any system)
    losses = extra.get("losses") or [float("nan")]
    extra["first_loss"] = losses[0]
    extra["final_loss"] = sum(losses[-spec.loss_window :]) / len(losses[-spec.loss_window :])
    result = {
        "system": system,
        "precision": precision,
        "packing": packing,
        "compiled": compiled,
        **probe.summary(warmup_of(probe, spec.warmup_steps_excluded)),
        **extra,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_after_imports_bytes": rss_start,
        "run_s": time.perf_counter() - started,
        "load_before": load_before,
        "load_after": load_average(),
        "torch_threads": torch.get_num_threads(),
    }
    out.write_text(json.dumps(result))


def run_profile(
    results: dict[str, dict[str, Any]], spec_json: str, threads: int
) -> dict[str, Any] | None:
    """Profile the fastest tunesmith system of this run (on the run's now warm compile cache)."""
    ran = {n: r for n, r in results.items() if n.startswith("tunesmith") and "error" not in r}
    if not ran:
        return None
    best = max(ran, key=lambda n: ran[n]["real_tokens_per_s"])
    print(f"profiling {best} ...", flush=True)
    profile = run_isolated(
        Path(__file__),
        ["--worker", f"profile:{best}", "--spec", spec_json],
        timeout=1800,
        threads=threads,
    )
    if "error" in profile:
        print("profile failed:", profile["error"], flush=True)
    else:
        print(profile_table(profile), flush=True)
    return profile


def warmup_of(probe: StepProbe, warmup: int) -> int:
    """Steps left out of the timing: the spec's warm-up, and any later step that took over 4x
    the median (a compile or recompile: reported as compile seconds, not as throughput)."""
    import statistics

    walls = [s.wall_s for s in probe.steps]
    if not walls:
        return warmup
    median = statistics.median(walls)
    slow = [i + 1 for i, w in enumerate(walls[: len(walls) // 2 + 1]) if w > 4 * median]
    return max([warmup, *slow])


# ---------------------------------------------------------------- report


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    """tokens/s and step time relative to tunesmith at the same precision (padded batches)."""
    for name, r in results.items():
        if "error" in r:
            continue
        base = results.get(BASELINE[SYSTEMS[name][1]], {})
        if "error" in base or not base:
            continue
        r["tokens_per_s_vs_tunesmith"] = r["real_tokens_per_s"] / base["real_tokens_per_s"]
        r["tokens_per_cpu_s_vs_tunesmith"] = (
            r["real_tokens_per_cpu_s"] / base["real_tokens_per_cpu_s"]
        )
        r["peak_rss_vs_tunesmith"] = r["peak_rss_bytes"] / base["peak_rss_bytes"]


def table(results: dict[str, dict[str, Any]]) -> str:
    headers = [
        "system",
        "median step s",
        "real tok/s",
        "x tunesmith",
        "real tok/CPU-s",
        "x tunesmith (CPU)",
        "padding",
        "MFU",
        "compile s / graphs / recompiles",
        "fwd / opt s",
        "peak RSS MiB",
        "first / final loss",
        "load 1-min",
    ]
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "failed: " + r["error"][:150]] + [""] * (len(headers) - 2))
            continue

        def ratio(key: str, res: dict[str, Any] = r) -> str:
            return f"{res[key]:.2f}" if key in res else "-"

        loss = r["final_loss"]
        dyn = r.get("dynamo") or {}
        compiled = (
            f"{dyn['compile_seconds']:.0f} / {dyn['compiled_graphs']} / {dyn['recompiles']}"
            if r.get("compiled") and dyn
            else "-"
        )
        rows.append(
            [
                name,
                f"{r['median_step_s']:.2f}",
                f"{r['real_tokens_per_s']:.0f}",
                ratio("tokens_per_s_vs_tunesmith"),
                f"{r['real_tokens_per_cpu_s']:.0f}",
                ratio("tokens_per_cpu_s_vs_tunesmith"),
                f"{100 * r['padding_fraction']:.0f}%",
                f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-",
                compiled,
                f"{r['median_forward_s']:.2f} / {r['median_optimizer_s']:.2f}",
                f"{r['peak_rss_bytes'] / 2**20:.0f}",
                f"{r['first_loss']:.4f} / {loss:.4f}",
                f"{r['load_before'][0]:.1f}-{r['load_after'][0]:.1f}",
            ]
        )
    return markdown_table(headers, rows)


def describe(spec: Spec, info: dict[str, Any]) -> str:
    from transformers import AutoConfig

    config = AutoConfig.for_model("llama", **spec.model)
    h, n, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    params = config.vocab_size * h + n * (4 * h * h + 3 * h * inter + 2 * h) + h
    return (
        f"Llama {params / 1e6:.1f}M parameters (hidden {h}, {n} layers, vocab "
        f"{config.vocab_size}, tied embeddings), tokenizer: {spec.tokenizer_label}; "
        f"Alpaca demo cut to {spec.cutoff_len} tokens; batch {spec.batch_size}, {spec.steps} "
        f"steps (first {spec.warmup_steps_excluded} not timed), AdamW lr {spec.lr} cosine, "
        f"clip 1.0, seed {spec.seed}. {info['cpus']} CPUs, {info['torch_threads']} torch "
        f"threads, load average at start {info['load_average_1_5_15']}; torch {info['torch']}, "
        f"transformers {info['transformers']}, trl {info['trl']}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, a few steps")
    parser.add_argument("--systems", help="comma-separated subset of: " + ", ".join(SYSTEMS))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per system (default 1: see README)"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per system")
    parser.add_argument("--batch-size", type=int, help="examples per step")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: SmolLM2 if cached)")
    parser.add_argument("--cuda", action="store_true", help="train on the GPU (every system)")
    parser.add_argument("--model-config", help="JSON file of LlamaConfig keys (a larger model)")
    parser.add_argument("--data", help="Alpaca-format JSON (default: ../shared/data's demo set)")
    parser.add_argument("--cutoff-len", type=int, help="cut examples to this many tokens")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the fastest tunesmith system: where its step time goes",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "limits":
        limits_worker(Spec(**json.loads(args.spec)), args.out, args.tmp, args.quick)
        return 0
    if args.worker and args.worker.startswith("profile:"):
        profile_worker(
            args.worker.removeprefix("profile:"), Spec(**json.loads(args.spec)), args.out, args.tmp
        )
        return 0
    if args.worker:
        worker(args.worker, Spec(**json.loads(args.spec)), args.out, args.tmp)
        return 0

    spec = make_spec(args.quick, args.tokenizer, args.model_config, args.data)
    spec.steps = args.steps or spec.steps
    spec.batch_size = args.batch_size or spec.batch_size
    spec.cutoff_len = args.cutoff_len or spec.cutoff_len
    spec.cuda = args.cuda
    default = QUICK_SYSTEMS if args.quick else list(SYSTEMS)
    names = args.systems.split(",") if args.systems else default
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    import shutil
    import tempfile

    # Cold compiles: a fresh inductor cache for this run (the quick run keeps the user's
    # persistent one, so a repeated smoke run is fast).
    cold_cache = "" if args.quick else tempfile.mkdtemp(prefix="tunesmith-bench-inductor-")
    spec.inductor_cache = cold_cache
    info = machine()
    info["torch_threads"] = args.threads
    print(describe(spec, info), flush=True)
    spec_json = json.dumps(asdict(spec))
    quick_flag = ["--quick"] if args.quick else []
    limits = run_isolated(
        Path(__file__),
        ["--worker", "limits", "--spec", spec_json, *quick_flag],
        timeout=900,
        threads=args.threads,
    )
    if "error" in limits:
        print("limits failed:", limits["error"], flush=True)
    else:
        peak = limits["peak"]
        print(
            f"matmul peak ({args.threads} threads, model shapes): bf16 {peak['bf16'] / 1e9:.0f}, "
            f"fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s; model FLOPs/token "
            f"{limits['flops_per_token']['total'] / 1e6:.0f}M",
            flush=True,
        )
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"running {name} ...", end=" ", flush=True)
        results[name] = run_isolated(
            Path(__file__),
            ["--worker", name, "--spec", spec_json],
            timeout=1800,
            threads=args.threads,
        )
        r = results[name]
        print(r.get("error") or f"{r['real_tokens_per_s']:.0f} real tokens/s", flush=True)
    profile = run_profile(results, spec_json, args.threads) if args.profile else None
    if cold_cache:
        shutil.rmtree(cold_cache, ignore_errors=True)
    add_ratios(results)
    if "error" not in limits:
        add_mfu(results, limits)
    info["load_average_end"] = load_average()
    text = table(results)
    markdown = (
        "# Training throughput\n\n"
        + describe(spec, info)
        + f" Load average at the end: {info['load_average_end']}.\n\n"
        + text
        + "\nx tunesmith: the system's value divided by tunesmith's at the same precision "
        "(padded batches), measured in this run. Real tokens exclude padding. CPU-s counts the "
        "process's CPU time over all threads, so it moves less than wall time when other "
        "processes share the cores. fwd / opt: median seconds per step in the model's forward "
        "and in optimizer.step() (on CUDA the forward column is launch time). MFU: PaLM model "
        "FLOPs per real token x real tokens/s / the matmul peak of the system's precision "
        "measured in this run (bench/_limits.py). compile: seconds dynamo + inductor spent, "
        "distinct graphs, recompiles (dynamo's counters; compile steps are not timed).\n"
    )
    if "error" not in limits:
        peak, fpt = limits["peak"], limits["flops_per_token"]
        markdown += (
            f"\nPeak (GEMMs of the model's shapes, {args.threads} thread(s)): bf16 "
            f"{peak['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s. Model "
            f"FLOPs per token {fpt['total'] / 1e6:.1f}M (dense {fpt['dense'] / 1e6:.1f}M, LM "
            f"head {fpt['lm_head'] / 1e6:.1f}M, attention {fpt['attention'] / 1e6:.1f}M at "
            f"context {fpt['context']:.0f}).\n"
        )
    if profile and "error" not in profile:
        markdown += (
            f"\n## Where {profile['system']}'s step time goes\n\ntorch profiler, "
            f"{profile['profiled_steps']} steps after the first {spec.warmup_steps_excluded + 1} "
            f"({profile['step_s']:.2f} s per step under the profiler; "
            f"{profile['dynamo']['recompiles']} recompiles). Each op's self time counts once; "
            "ops under the optimizer step or the data loader count there (bench/_profile.py).\n\n"
            + profile_table(profile)
        )
    # A smoke run never replaces the full results.
    payload = {"spec": asdict(spec), "machine": info, "quick": args.quick, "results": results}
    if profile:
        payload["profile"] = profile
    if "error" not in limits:
        payload["peak_flops"] = {"bf16": limits["peak"]["bf16"], "fp32": limits["peak"]["fp32"]}
        payload["limits"] = limits
    name = "throughput_quick" if args.quick else "throughput"
    write_results(f"{name}_cuda" if args.cuda else name, payload, markdown)
    print(text)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
