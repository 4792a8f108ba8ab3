"""One cross-check of method x strategy x model x data, before any weights load.

Each rule returns human-readable refusals; `check` raises them all at once as a UserError so the
user sees every problem of the recipe in one go. `preflight` is everything a run checks before
its run folder exists (the data itself is then read and tokenised, still before the folder).
"""

from __future__ import annotations

from typing import Any

from tunesmith.config import Config
from tunesmith.errors import UserError
from tunesmith.methods.base import Capabilities


def refusals(
    cfg: Config, capabilities: Capabilities, strategy: Any, model_type: str, encoder_decoder: bool
) -> list[str]:
    """Every reason this run cannot work as configured (empty when it can)."""
    method = cfg.method.name
    out: list[str] = []
    if encoder_decoder and not capabilities.supports_encoder_decoder:
        out.append(f"method {method} does not support encoder-decoder models ({model_type})")
    if capabilities.model_types is not None and model_type not in capabilities.model_types:
        out.append(
            f"method {method} works only on {', '.join(capabilities.model_types)} models, "
            f"not {model_type}"
        )
    if cfg.data.packing and not capabilities.supports_packing:
        out.append(f"method {method} cannot train on packed rows: set data.packing=false")
    if cfg.data.packing and encoder_decoder:
        out.append("packing is for decoder-only models: set data.packing=false")
    if cfg.model.quantization != "none" and not capabilities.adapter_only_save:
        out.append(
            f"model.quantization={cfg.model.quantization} freezes the base weights, so method "
            f"{method} cannot train them: use an adapter method (lora)"
        )
    out.extend(strategy.check(capabilities, cfg))
    out.extend(objective_refusals(cfg, capabilities, encoder_decoder))
    return out


def objective_refusals(cfg: Config, capabilities: Capabilities, encoder_decoder: bool) -> list[str]:
    """Why the objective cannot run with this method, strategy and data (empty when it can)."""
    from tunesmith.objectives import OBJECTIVES

    name = cfg.objective.name
    objective = OBJECTIVES[name]
    if objective.data_kind == "tokens":
        return []
    out = []
    if encoder_decoder:
        out.append(f"objective {name} is for decoder-only models")
    if cfg.data.packing:
        out.append(f"objective {name} scores whole responses: set data.packing=false")
    # The new score head must train from the first step and be saved whole: only `full` does
    # both (freeze's layer choice and Green Trainer's selection do not know the head).
    if objective.head == "score" and cfg.method.name != "full":
        out.append(
            f"objective {name} trains a new score head, which method {cfg.method.name} does not "
            "train and save: use method.name=full"
        )
    # A frozen reference copy is deep-copied from the built policy and placed like it
    # (Strategy.place_frozen); a policy built already partitioned by zero.Init has no whole
    # weights to copy.
    zero3_init = cfg.strategy.name == "deepspeed" and getattr(cfg.strategy, "zero3_init", False)
    copies = objective.needs_reference and not capabilities.adapter_only_save
    if copies and zero3_init and not getattr(cfg.objective, "precompute_reference", False):
        fix = "objective.precompute_reference=true, " * hasattr(
            cfg.objective, "precompute_reference"
        )
        out.append(
            f"objective {name} with method {cfg.method.name} needs a reference copy of the "
            f"model, which strategy.zero3_init=true leaves nothing whole to copy from: set {fix}"
            "strategy.zero3_init=false or use an adapter method (lora)"
        )
    return out


def check(
    cfg: Config, capabilities: Capabilities, strategy: Any, model_type: str, encoder_decoder: bool
) -> None:
    """Raise a UserError listing every refusal, if any."""
    problems = refusals(cfg, capabilities, strategy, model_type, encoder_decoder)
    if problems:
        raise UserError(
            "this configuration cannot run: " + "; ".join(problems),
            "see docs/compatibility.md for what works together",
        )


def preflight(
    cfg: Config, capabilities: Capabilities, strategy: Any, model_type: str, encoder_decoder: bool
) -> None:
    """The checks that need no weights and no data: compatibility, trackers, prompt templates.

    A failure here leaves nothing behind, so the same command can simply be run again once
    fixed. Checks of new config sections (e.g. a preference `objective`) belong in this list.

    Raises:
        UserError: the first failed group of checks (compatibility lists all its refusals).
    """
    from tunesmith.data.chat_templates import chat_template
    from tunesmith.data.formats import check_entry
    from tunesmith.data.plugins import load_plugins
    from tunesmith.data.sources import dataset_entries
    from tunesmith.tracking import check_available

    check(cfg, capabilities, strategy, model_type, encoder_decoder)
    check_available(cfg.tracking.backends)
    if cfg.data.chat_template is not None:
        chat_template(cfg.data.chat_template)  # an unknown name is refused here
    load_plugins(cfg.plugins)  # plugin formats must be registered before entries are checked
    for split in ("train", "validation", "test"):
        for entry in dataset_entries(cfg.data, split):
            check_entry(entry)


def objective_table() -> str:
    """The objective x method table (markdown, strategy single; then the strategies that refuse
    a method's objective are named in the cell), from the same rules `check` applies."""
    from tunesmith.config import config_from_dict
    from tunesmith.methods import METHODS
    from tunesmith.objectives import OBJECTIVES
    from tunesmith.strategies import STRATEGIES

    example_options = {"freeze": {"train_top_layers": 1}}
    lines = [
        "| objective | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for objective in OBJECTIVES:
        cells = []
        for method in METHODS:
            refused: dict[str, list[str]] = {}
            runnable = 0
            for strategy_name, strategy_cls in STRATEGIES.items():
                cfg = config_from_dict(
                    {
                        "method": {"name": method, **example_options.get(method, {})},
                        "strategy": {"name": strategy_name},
                        "objective": {"name": objective},
                    }
                )
                caps = METHODS[method].capabilities
                problems = objective_refusals(cfg, caps, False)
                strategy = strategy_cls.__new__(strategy_cls)
                if not strategy.check(caps, cfg):  # the method runs on this strategy
                    runnable += 1
                    if problems:
                        refused[strategy_name] = problems
            if not refused:
                cells.append("yes")
            elif len(refused) == runnable:
                cells.append("no: " + "; ".join(next(iter(refused.values()))))
            else:
                cells.append(
                    f"not on {', '.join(refused)}: " + "; ".join(next(iter(refused.values())))
                )
        lines.append(f"| {objective} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def method_strategy_table() -> str:
    """The method x strategy table (markdown) from the same rules `check` applies.

        python -m tunesmith.compat --markdown > docs/compatibility.md   (the table part)

    Each cell is checked with the method's and strategy's default options on a decoder-only
    model; a refusal shows its reason. `strategy.check` must not rely on process-group state,
    so a bare instance (no __init__) is enough here.
    """
    from tunesmith.config import config_from_dict
    from tunesmith.methods import METHODS
    from tunesmith.strategies import STRATEGIES

    # Methods whose defaults do not run alone get the smallest options that do.
    example_options = {"freeze": {"train_top_layers": 1}}
    rows = [(name, {}) for name in METHODS]
    rows.append(("lora", {"model": {"quantization": "nf4"}}))  # QLoRA
    lines = [
        "| method | " + " | ".join(STRATEGIES) + " |",
        "|---|" + "---|" * len(STRATEGIES),
    ]
    for method, extra in rows:
        label = method if not extra else f"{method} + model.quantization=nf4 (QLoRA)"
        cells = []
        for strategy_name, strategy_cls in STRATEGIES.items():
            cfg = config_from_dict(
                {
                    **extra,
                    "method": {"name": method, **example_options.get(method, {})},
                    "strategy": {"name": strategy_name},
                }
            )
            caps = METHODS[method].capabilities
            problems = refusals(cfg, caps, strategy_cls.__new__(strategy_cls), "llama", False)
            cells.append("yes" if not problems else "no: " + "; ".join(problems))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if "--markdown" not in sys.argv[1:]:
        print("usage: python -m tunesmith.compat --markdown", file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(method_strategy_table())
    sys.stdout.write("\n")
    sys.stdout.write(objective_table())
