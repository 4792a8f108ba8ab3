"""The `tunesmith` command: subcommands that parse arguments and call library functions.

    tunesmith train configs/quickstart.yaml train.max_steps=50 output_dir=runs/a
    tunesmith generate runs/a --input data.jsonl --output preds.jsonl --max-new-tokens 64
    tunesmith evaluate runs/a --data test.jsonl --metrics rougeL,exact_match
    tunesmith generate runs/a --adapter b=runs/b --use b --input in.jsonl --output out.jsonl
    tunesmith export runs/a --out exported/a --merge --dtype bf16
    tunesmith export runs/a --gguf a.gguf --quant q8_0
    tunesmith chat runs/a --adapter b=runs/b --max-new-tokens 128
    tunesmith plan configs/quickstart.yaml --compare --device a100-80gb
    tunesmith config --explain train
    tunesmith train cfg.yaml strategy.name=ddp --nproc-per-node 2
    tunesmith board --runs runs                     # web page: plan, launch, watch, compare, try
    tunesmith slurm cfg.yaml --nodes 2 --gpus-per-node 8 --partition gpu -o job.sbatch

User mistakes print one line (`error: ...`) and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from tunesmith import launch
from tunesmith.errors import EXIT_USER_ERROR, UserError

if TYPE_CHECKING:
    from tunesmith.generate import GenerationSettings


def split_recipe(first: str | None, rest: list[str]) -> tuple[str | None, list[str]]:
    """The recipe path and the overrides; a run may be given by overrides alone."""
    if first is not None and "=" in first:
        return None, [first, *rest]
    return first, rest


def cmd_train(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config
    from tunesmith.train.loop import train

    path, overrides = split_recipe(args.config, args.overrides)
    cfg = load_config(path, overrides)  # recipe errors show before any process starts
    if launch.wants_relaunch(args):
        from tunesmith.train.run_dir import resolve_output_dir

        return launch.relaunch(args, args.argv, str(resolve_output_dir(cfg)))
    summary = train(cfg, overwrite=args.overwrite)
    return summary.get("exit_code", 0)  # 128 + signal after a SIGTERM/SIGINT checkpoint


def cmd_generate(args: argparse.Namespace) -> int:
    from tunesmith.generate import generate_file

    settings = sampling_settings(args)
    settings.batch_size = args.batch_size
    adapters = dict(parse_named_path(item) for item in args.adapter or [])
    n = generate_file(args.model, args.input, args.output, settings, adapters, args.use)
    print(f"wrote {n} records to {args.output}", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from tunesmith.chat import chat_loop
    from tunesmith.generate import load_for_inference

    adapters = dict(parse_named_path(item) for item in args.adapter or [])
    loaded = load_for_inference(args.model, adapters=adapters, use=args.use)
    return chat_loop(loaded, sampling_settings(args), system=args.system)


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """The generation options `generate` and `chat` share."""
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability mass")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (1: none)")
    p.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="penalty on repeated tokens"
    )
    p.add_argument(
        "--adapter",
        action="append",
        metavar="NAME=PATH",
        help="load another adapter onto the same base (repeatable); pick one with --use",
    )
    p.add_argument("--use", metavar="NAME", help="the adapter that generates (default: MODEL's)")


def sampling_settings(args: argparse.Namespace) -> GenerationSettings:
    """GenerationSettings from the options of `add_sampling_options`."""
    from tunesmith.generate import GenerationSettings

    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=args.num_beams,
        repetition_penalty=args.repetition_penalty,
    )


def parse_named_path(item: str) -> tuple[str, str]:
    """`NAME=PATH` of --adapter."""
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--adapter {item!r} is not NAME=PATH", "write e.g. --adapter sql=runs/sql")
    return name, path


def cmd_export(args: argparse.Namespace) -> int:
    from tunesmith.export import export, export_gguf

    if (args.out is None) == (args.gguf is None):
        raise UserError("export needs one of --out DIR or --gguf FILE", "give exactly one")
    if args.gguf is not None:
        out = export_gguf(args.source, args.gguf, args.quant)
    else:
        out = export(args.source, args.out, merge=args.merge, dtype=args.dtype)
    print(f"exported {args.source} to {out}", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunesmith.data.formats import format_record
    from tunesmith.data.presets import PRESET_METRICS
    from tunesmith.data.sources import read_records
    from tunesmith.evaluate import task_metrics
    from tunesmith.generate import (
        GenerationSettings,
        entry_from_record,
        prompt_limits,
        read_run_record,
        resolve_model_dir,
    )

    model_dir = resolve_model_dir(args.model)
    record = read_run_record(model_dir)
    entry = entry_from_record(record, args.data)
    limits = prompt_limits(entry, (record.get("data") or {}).get("max_seq_len"))
    examples = [format_record(r, entry) for r in read_records(args.data, "test")][: args.limit]
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, batch_size=args.batch_size
    )
    names = [m.strip() for m in (args.metrics or "").split(",") if m.strip()]
    if not names:  # the preset's own metrics (GLEU for JFLEG), else ROUGE-L
        names = PRESET_METRICS.get(entry.preset or "", ["rougeL"])
    predictions = Path(args.predictions) if args.predictions else None
    results = task_metrics(model_dir, examples, names, settings, limits, predictions)
    if not results:
        print("no examples with an output to score", file=sys.stderr)
        return 2
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(
            f"{key.ljust(width)}  {value:.4f}"
            if isinstance(value, float)
            else f"{key.ljust(width)}  {value}"
        )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunesmith.compare import compare_runs

    print(compare_runs([Path(r) for r in args.runs], Path(args.plot)))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config
    from tunesmith.estimate.memory import DEVICES, compare_methods, format_plans
    from tunesmith.methods import METHODS

    path, overrides = split_recipe(args.config, args.overrides)
    cfg = load_config(path, overrides)
    if args.device not in DEVICES:
        raise UserError(f"unknown --device {args.device!r}", f"choose one of {', '.join(DEVICES)}")
    seq_len = args.seq_len or cfg.data.max_seq_len or cfg.data.cutoff_len or 512
    names = list(METHODS) if args.compare else [cfg.method.name]
    plans = compare_methods(cfg, names, device=args.device, world=args.gpus, seq_len=seq_len)
    m = cfg.model
    print(
        f"plan: {m.name or m.config.get('model_type')} (dtype {m.dtype}, quantization "
        f"{m.quantization}) on {args.gpus} x {args.device}, strategy {cfg.strategy.name}, "
        f"precision {cfg.train.precision}, activation checkpointing "
        f"{'on' if cfg.train.activation_checkpointing else 'off'}, "
        f"batch {cfg.train.batch_size} x {seq_len} tokens per device"
    )
    print(format_plans(plans, names))
    print(
        "Estimates from first principles (docs/planning.md), within 10% of measured peaks in "
        "bench/plan_accuracy.py; allow 10-20% for allocator and framework buffers. 'fits' keeps "
        "15% headroom."
    )
    own = plans[names.index(cfg.method.name)] if cfg.method.name in names else None
    if own is not None and not isinstance(own, Exception) and not own.fits:
        from tunesmith.estimate.fit import what_would_fit

        options = what_would_fit(cfg, args.device, args.gpus, seq_len)
        print(f"\nThe recipe does not fit {args.device}. What would fit:")
        for option in options or []:
            print(f"  {option.describe()}")
        if not options:
            print("  no single change does: a device with more memory, or several changes at once")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from tunesmith.config import explain, load_config, to_dict

    if args.explain is not None or args.config is None:
        print(explain(args.explain or None))
        return 0
    import yaml

    path, overrides = split_recipe(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(load_config(path, overrides)), sort_keys=False))
    return 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config
    from tunesmith.data.preview import preview_text
    from tunesmith.models.load import (
        is_encoder_decoder,
        load_config_of,
        load_tokenizer,
        model_context,
    )

    cfg = load_config(*split_recipe(args.config, args.overrides))
    hf_config = load_config_of(cfg.model)
    encoder_decoder = is_encoder_decoder(cfg.model, hf_config)
    tokenizer = load_tokenizer(cfg.model, cfg.data.chat_template)
    print(preview_text(cfg, tokenizer, encoder_decoder, args.n, model_context(hf_config)))
    return 0


def cmd_board(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from tunesmith.board.app import serve
    except ImportError as exc:
        raise UserError(
            f"the board needs the `board` extra ({exc.name} is missing)",
            "pip install 'tunesmith[board]'",
        ) from None
    serve(
        Path(args.runs),
        [Path(d) for d in args.recipes or ["configs"]],
        args.host,
        args.port,
        args.auth,
    )
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to a flag's help, except where there is nothing to show (None,
    off switches) or the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def build_parser() -> argparse.ArgumentParser:
    """The `tunesmith` argument parser: every subcommand, every flag with help and its default."""
    from tunesmith import __version__

    parser = argparse.ArgumentParser(
        prog="tunesmith",
        description="Fine-tune language models.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a model from a YAML recipe")
    p.add_argument("config", nargs="?", help="recipe YAML (see configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=50")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    launch.add_launch_flags(p)
    p.set_defaults(func=cmd_train)
    launch.add_cluster_commands(sub)

    p = sub.add_parser("generate", help="generate for a jsonl of inputs with a trained model")
    p.add_argument("model", help="run folder or model/adapter folder")
    p.add_argument("--input", required=True, help="jsonl of records (same fields as training)")
    p.add_argument("--output", required=True, help="jsonl to write (records + generated_text)")
    add_sampling_options(p)
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk to a trained model or adapter in the terminal")
    p.add_argument("model", help="run folder or model/adapter folder")
    p.add_argument("--system", help="system message to start with (chat-template runs)")
    add_sampling_options(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("export", help="write a run's model as a standard HF or PEFT folder")
    p.add_argument("source", help="run folder, its final/, or a checkpoint folder")
    p.add_argument("--out", help="new folder to write (must not exist or be empty)")
    p.add_argument("--gguf", metavar="FILE", help="write one GGUF file (llama.cpp, Ollama) instead")
    p.add_argument(
        "--quant", choices=["f16", "bf16", "q8_0"], default="f16", help="GGUF weight type"
    )
    p.add_argument(
        "--merge", action="store_true", help="fold a LoRA/IA3 adapter into the base weights"
    )
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="cast the weights")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "evaluate", help="score a trained model's generations (ROUGE, BLEU, chrF, GLEU, EM, F1)"
    )
    p.add_argument("model", help="run folder or model/adapter folder")
    p.add_argument("--data", required=True, help="data with the fields used in training")
    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated: rouge1,rouge2,rougeL,rougeLsum,bleu,chrf,gleu,exact_match,f1"
        " (default: the data preset's, e.g. gleu for jfleg; else rougeL)",
    )
    p.add_argument("--limit", type=int, default=None, help="score only the first N records")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (1: none)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    p.add_argument("--predictions", help="also write prompts, references and generations here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="config differences, final metrics and losses of runs")
    p.add_argument("runs", nargs="+", help="two or more run folders")
    p.add_argument(
        "--plot", default="compare.png", help="PNG of the overlaid losses (default: compare.png)"
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("plan", help="memory and FLOPs per device before launching")
    p.add_argument("config", nargs="?", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument(
        "--device", default="cpu", help="cpu, l4-24gb, a100-80gb, h100-80gb, h200-141gb, ..."
    )
    p.add_argument("--gpus", type=int, default=1, help="processes / devices in total")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per example (padded)")
    p.add_argument("--compare", action="store_true", help="every registered method side by side")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("config", help="explain config keys, or print a resolved recipe")
    p.add_argument("config", nargs="?", help="recipe YAML to resolve and print")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument(
        "--explain",
        nargs="?",
        const="",
        default=None,
        metavar="SECTION",
        help="print fields, types, defaults and help (all sections, or one: train, method.lora...)",
    )
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("board", help="local web page to plan, launch, watch, compare, try runs")
    p.add_argument("--runs", default="runs", help="folder of run folders (launches go here)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (others need --auth)")
    p.add_argument("--port", type=int, default=7860, help="port to serve the page on")
    p.add_argument("--auth", metavar="USER:PASS", help="HTTP Basic login; required off-localhost")
    p.add_argument(
        "--recipes",
        action="append",
        default=None,
        metavar="DIR",
        help="folder of recipes to start from (repeatable; default: configs)",
    )
    p.set_defaults(func=cmd_board)

    data = sub.add_parser("data", help="inspect the data of a recipe").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser("preview", help="formatted examples, lengths, truncation, packing")
    p.add_argument("config", nargs="?", help="recipe YAML (or only key=value overrides)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--n", type=int, default=5, help="examples to show")
    p.set_defaults(func=cmd_data_preview)
    for each in all_parsers(parser):  # `--help` of every subcommand shows the defaults too
        each.formatter_class = HelpFormatter
    return parser


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every subcommand's parser below it, depth first."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases once
                out += all_parsers(child)
    return out


def quiet_third_party_noise() -> None:
    """Silence warnings a user can do nothing about.

    bitsandbytes warns at import on CPUs with bf16 support that its optional fast 4-bit kernel
    (fetched from the hub) is missing; it then uses its built-in kernel, which is correct.
    """
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    quiet_third_party_noise()
    parser = build_parser()
    # Overrides may come after options (`train r.yaml --overwrite train.lr=1e-4`): argparse
    # leaves such key=value words unparsed, so they are added to the overrides here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or not all("=" in word for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the torchrun re-exec
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except UserError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
