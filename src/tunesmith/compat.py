"""One cross-check of method x strategy x model x data, before any weights load.

Each rule returns human-readable refusals; `check` raises them all at once as a UserError so the
user sees every problem of the recipe in one go.
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
