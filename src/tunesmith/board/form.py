"""The New-run form: its fields come from the config dataclasses, its values go back through
config.py's own loader, so the page shows the same one-line errors as a YAML recipe.

Each field is `section.key` with its type, default and help text (the same metadata
`tunesmith config --explain` prints). `method` and `strategy` list the fields of every registered
option class; the page shows the ones of the selected `name`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from tunesmith.config import (
    SECTIONS,
    TOP_LEVEL,
    UNIONS,
    Config,
    _type_name,
    _union_registries,
    apply_override,
    config_from_dict,
    load_config,
    to_dict,
)
from tunesmith.errors import UserError

SOURCE = "<form>"
# The board chooses where a run goes and whether it resumes; the form does not offer them.
BOARD_OWNED = ("output_dir", "resume")


def _widget(annotation: Any) -> tuple[str, list[str]]:
    """(kind, choices): bool -> checkbox, Literal -> select, numbers/str -> text, the free-form
    types (dict, list, Any) -> YAML text."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        return "select", [str(a) for a in typing.get_args(annotation)]
    if annotation is bool:
        return "bool", []
    if annotation in (int, float):
        return "number", []
    if annotation is str:
        return "text", []
    return "yaml", []


def _fields(cls: type, prefix: str, only: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in BOARD_OWNED:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind, choices = _widget(hints[f.name])
        out.append(
            {
                "key": f"{prefix}{f.name}",
                "type": _type_name(hints[f.name]),
                "kind": kind,
                "choices": choices,
                "default": to_text(default, kind),
                "help": f.metadata.get("help", ""),
            }
        )
    return out


def schema() -> dict[str, Any]:
    """Every form field, grouped by section; method/strategy options per registered name."""
    sections = {"top": _fields(Config, "", TOP_LEVEL)}
    for name, cls in SECTIONS.items():
        sections[name] = _fields(cls, f"{name}.")
    unions = {
        union: {
            tag: [f for f in _fields(impl.Options, f"{union}.") if f["key"] != f"{union}.name"]
            for tag, impl in registry.items()
        }
        for union, registry in _union_registries().items()
    }
    return {"sections": sections, "unions": unions}


def to_text(value: Any, kind: str) -> str:
    """A config value as the form shows it (empty text is null)."""
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value else "false"
    if kind == "yaml":
        return (
            value
            if isinstance(value, str)
            else yaml.safe_dump(
                value, default_flow_style=True, width=10**6, sort_keys=False
            ).strip()
        )
    return str(value)


def _kinds() -> dict[str, str]:
    s = schema()
    kinds = {f["key"]: f["kind"] for fields in s["sections"].values() for f in fields}
    for options in s["unions"].values():
        for fields in options.values():
            kinds.update({f["key"]: f["kind"] for f in fields})
    return kinds


def config_from_form(values: dict[str, str]) -> Config:
    """Build a Config from the form's `section.key -> text`, checked by config.py.

    Text fields are taken as typed (a prompt template like `Spell __input__:` is not YAML);
    numbers, booleans and the free-form fields are read as YAML, like a command-line override;
    empty means null. Keys are passed on as they come, so an
    unknown one gets config.py's "unknown key ... did you mean" error.

    Raises:
        UserError: the one-line error the same values in a YAML recipe would give.
    """
    kinds = _kinds()
    raw: dict[str, Any] = {}
    for key, text in values.items():
        if key in BOARD_OWNED:
            continue
        text = "" if text is None else str(text)
        if kinds.get(key) in ("text", "select"):
            _set(raw, key, text if text != "" else None)
        else:
            apply_override(raw, f"{key}={text}")
    return config_from_dict(raw, SOURCE)


def _set(raw: dict, key: str, value: Any) -> None:
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def form_values(cfg: Config) -> dict[str, str]:
    """The form's `section.key -> text` for a config (a recipe or a run's config.yaml)."""
    kinds = _kinds()
    data = to_dict(cfg)
    out = {}
    for key, kind in kinds.items():
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (
            key.startswith(tuple(f"{u}." for u in UNIONS))
            and key.split(".")[1] not in data[key.split(".")[0]]
        ):
            continue  # an option of another method/strategy than the selected one
        out[key] = to_text(node, kind)
    for union in UNIONS:
        out[f"{union}.name"] = getattr(cfg, union).name
    return out


def recipe_dict(cfg: Config) -> dict[str, Any]:
    """The recipe the board writes into a run folder: the resolved config, minus the keys the
    launch command sets (output_dir, resume)."""
    data = to_dict(cfg)
    for key in BOARD_OWNED:
        data.pop(key, None)
    return data


def list_recipes(folders: list[Path]) -> list[str]:
    """The YAML recipes in the recipe folders (not in subfolders), as the page names them."""
    out = []
    for folder in folders:
        if folder.is_dir():
            out += [str(p) for p in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))]
    return out


def load_recipe(path: str, folders: list[Path]) -> Config:
    """Load a recipe by the name `list_recipes` gave it; anything else is refused."""
    if path not in list_recipes(folders):
        raise UserError(f"{path}: not a recipe of this board", "pick one from the list")
    return load_config(path)


def check_confined(cfg: Config, allowed: list[Path]) -> None:
    """Refuse plugin files outside the runs and recipe folders: a plugin is Python that the
    board's own process (preview, plan) and the run would execute."""
    roots = [p.resolve() for p in allowed]
    for plugin in cfg.plugins:
        where = Path(plugin).resolve()
        if not any(where.is_relative_to(root) for root in roots):
            raise UserError(
                f"{SOURCE}: plugins entry {plugin!r} is outside the board's folders",
                f"put it under {', '.join(map(str, allowed))}",
            )


def plan_rows(cfg: Config, device: str, gpus: int, compare: bool) -> list[dict[str, Any]]:
    """`tunesmith plan` as rows (memory per device, FLOPs, what fits) for the form's config."""
    from tunesmith.estimate.memory import DEVICES, GIB, compare_methods
    from tunesmith.methods import METHODS

    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}", f"choose one of {', '.join(DEVICES)}")
    seq_len = cfg.data.max_seq_len or cfg.data.cutoff_len or 512
    names = list(METHODS) if compare else [cfg.method.name]
    rows = []
    for name, p in zip(
        names, compare_methods(cfg, names, device=device, world=gpus, seq_len=seq_len)
    ):
        if isinstance(p, Exception):
            rows.append({"method": name, "error": str(p).splitlines()[0][:120]})
            continue
        parts = {k: v / GIB for k, v in p.components().items() if k != "total" and v}
        rows.append(
            {
                "method": name,
                "trainable": p.shape.trainable_params,
                "total_params": p.shape.total_params,
                "components_gib": parts,
                "total_gib": p.total / GIB,
                "fits": bool(p.fits),
                "step_tflops": p.step_flops / 1e12,
                "step_seconds": p.step_seconds,
                "seq_len": seq_len,
            }
        )
    return rows


def would_fit(cfg: Config, device: str, gpus: int) -> list[dict[str, Any]]:
    """`tunesmith plan`'s "what would fit" for a form whose recipe does not fit (else [])."""
    from tunesmith.estimate.fit import what_would_fit
    from tunesmith.estimate.memory import GIB, plan

    seq_len = cfg.data.max_seq_len or cfg.data.cutoff_len or 512
    try:
        if plan(cfg, device=device, world=gpus, seq_len=seq_len).fits:
            return []
    except Exception:  # the plan rows already carry this method's error
        return []
    return [
        {"overrides": s.overrides, "world": s.world, "total_gib": s.plan.total / GIB}
        for s in what_would_fit(cfg, device, gpus, seq_len)
    ]


def devices() -> list[str]:
    """The device names the planner knows."""
    from tunesmith.estimate.memory import DEVICES

    return list(DEVICES)
