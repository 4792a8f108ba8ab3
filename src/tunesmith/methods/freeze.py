"""Partial fine-tuning: train a chosen part of the model, or new layers on top of a frozen one.

    tunesmith train configs/freeze.yaml

Choose what trains (seeds 001/002):
- `num_freeze_layers: N` freezes the first N transformer blocks and everything registered before
  them (embeddings); the blocks above, final norm and head train (seed 002's option).
- `train_top_layers: K` is the same counted from the top: only the last K blocks and what follows.
- `head_only: true` trains only the output head. When the head shares its weight with the input
  embeddings (tied, as in GPT-2 and T5), the head is untied into its own parameter and the config
  says `tie_word_embeddings: false`; training it would otherwise train the input embeddings too.
- `trainable_patterns: ["*bias*"]` adds parameters whose names match globs (BitFit).
- `extra_head_layers: N` appends N copies of the last block with their output projections set to
  zero (LLaMA-Pro), so the new model computes exactly the base's function at step 0; only the new
  blocks train (plus anything the options above select). The result stays a standard HF model:
  the config's layer count grows and `from_pretrained` loads it.

Blocks are found generically: the model's ModuleLists of identical layers (decoder-only: one;
encoder-decoder: encoder then decoder, counted in that order). `final/` is a full HF model.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config import option
from tunesmith.errors import UserError
from tunesmith.methods.base import Capabilities, StepContext, default_param_groups, unwrap
from tunesmith.methods.full import save_full_model


@dataclass
class FreezeOptions:
    name: str = option("freeze", "Partial fine-tuning: train some layers, the head, or new layers.")
    num_freeze_layers: int | None = option(
        None, "Freeze the embeddings and the first N transformer blocks; train the rest."
    )
    train_top_layers: int | None = option(
        None, "Train only the last K blocks (and the final norm and head above them)."
    )
    head_only: bool = option(
        False, "Train only the output head (untied from the input embeddings if they share it)."
    )
    trainable_patterns: list = option(
        [], "Also train parameters whose names match these globs, e.g. ['*bias*'] for BitFit."
    )
    extra_head_layers: int = option(
        0,
        "Append N copies of the last block, output projections zeroed (LLaMA-Pro), and train them.",
    )

    def __post_init__(self) -> None:
        chosen = [
            key
            for key, on in (
                ("num_freeze_layers", self.num_freeze_layers is not None),
                ("train_top_layers", self.train_top_layers is not None),
                ("head_only", self.head_only),
            )
            if on
        ]
        if len(chosen) > 1:
            raise UserError(
                f"method.{' and method.'.join(chosen)} are alternatives",
                "set only one of num_freeze_layers, train_top_layers, head_only",
            )
        if not chosen and not self.trainable_patterns and self.extra_head_layers == 0:
            raise UserError(
                "method freeze needs to know what to train",
                "set num_freeze_layers, train_top_layers, head_only, trainable_patterns "
                "or extra_head_layers",
            )
        for key in ("num_freeze_layers", "train_top_layers", "extra_head_layers"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise UserError(f"method.{key}={value} must not be negative")


# ---------------------------------------------------------------- finding the blocks


def block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The model's lists of transformer blocks, outermost only, in registration order.

    A block list is a ModuleList of layers of one class that hold parameters; when the model
    declares its block class (`_no_split_modules`, as HF transformers do for device placement),
    lists of that class are preferred.
    """
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) == 1 and any(True for _ in module[0].parameters()):
            candidates.append((name, module))
    outer = [(n, m) for n, m in candidates if not any(n.startswith(o + ".") for o, _ in candidates)]
    declared = set(getattr(model, "_no_split_modules", None) or [])
    preferred = [(n, m) for n, m in outer if type(m[0]).__name__ in declared]
    found = preferred or outer
    if not found:
        raise UserError(
            f"cannot find the transformer blocks of {type(model).__name__}",
            "use trainable_patterns to choose parameters by name",
        )
    return found


def all_blocks(model: nn.Module) -> list[nn.Module]:
    """Every block in data-flow order (encoder blocks before decoder blocks)."""
    return [block for _, blocks in block_lists(model) for block in blocks]


def _unique_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(model.named_parameters())  # already deduplicates tied parameters


# ---------------------------------------------------------------- selections


def freeze_below(model: nn.Module, first_trained: int) -> None:
    """Train block `first_trained` and everything registered after it; freeze the rest.

    Registration order follows the data flow in HF models (embeddings, blocks, final norm, head),
    so "before the first trained block" is exactly the embeddings and the frozen blocks.
    """
    blocks = all_blocks(model)
    if not 0 <= first_trained <= len(blocks):
        raise UserError(
            f"the model has {len(blocks)} transformer blocks; cannot freeze {first_trained}",
            f"choose a number between 0 and {len(blocks)}",
        )
    boundary = (
        {id(p) for p in blocks[first_trained].parameters()} if first_trained < len(blocks) else None
    )
    training = False
    for _, param in _unique_named_parameters(model):
        if boundary is not None and id(param) in boundary:
            training = True
        param.requires_grad_(training)
    if training is False:  # every block frozen: what follows the last block still trains
        last = {id(p) for p in blocks[-1].parameters()}
        after = False
        for _, param in _unique_named_parameters(model):
            if id(param) in last:
                after = True
            elif after:
                param.requires_grad_(True)


def output_head_untied(model: nn.Module) -> nn.Module:
    """The output head, given its own weight if it shared the input embeddings'."""
    head = model.get_output_embeddings()
    if head is None:
        raise UserError(f"{type(model).__name__} has no output head", "use trainable_patterns")
    inputs = model.get_input_embeddings()
    if head.weight is inputs.weight:
        head.weight = nn.Parameter(inputs.weight.detach().clone())
        model.config.tie_word_embeddings = False
        text_config = model.config.get_text_config()
        if text_config is not model.config:
            text_config.tie_word_embeddings = False
        warnings.warn(
            "freeze head_only: the output head shared its weight with the input embeddings; it "
            "now has its own copy (config.tie_word_embeddings=false), so only the head trains",
            stacklevel=2,
        )
    return head


def matching_parameters(model: nn.Module, patterns: list[str]) -> list[nn.Parameter]:
    """Parameters whose names match any of the glob patterns."""
    named = _unique_named_parameters(model)
    out = [p for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if patterns and not out:
        raise UserError(
            f"method.trainable_patterns {patterns} match no parameter",
            f"parameter names look like {named[0][0]!r}",
        )
    return out


# ---------------------------------------------------------------- LLaMA-Pro block expansion


def _linears(module: nn.Module) -> list[tuple[nn.Module, int]]:
    """(layer, output size) of the direct children that are linear (nn.Linear or HF Conv1D)."""
    out = []
    for child in module.children():
        if isinstance(child, nn.Linear):
            out.append((child, child.out_features))
        elif type(child).__name__ == "Conv1D":  # GPT-2's transposed linear: weight is (in, out)
            out.append((child, child.nf))
    return out


def zero_output_projections(block: nn.Module, hidden: int) -> int:
    """Zero the last hidden-sized linear of every sub-layer (attention, MLP) of a block.

    Those are the projections that write into the residual stream (o_proj/down_proj, c_proj, o/wo);
    with them at zero the block adds nothing and passes its input through unchanged.
    Returns how many were zeroed.
    """
    zeroed = 0
    for module in block.modules():
        writers = [layer for layer, size in _linears(module) if size == hidden]
        if writers:
            last = writers[-1]
            with torch.no_grad():
                last.weight.zero_()
                if getattr(last, "bias", None) is not None:
                    last.bias.zero_()
            zeroed += 1
    return zeroed


def _probe_logits(model: nn.Module) -> torch.Tensor:
    device = next(model.parameters()).device
    ids = torch.arange(3, 11, device=device).unsqueeze(0) % model.config.vocab_size
    kwargs = {"decoder_input_ids": ids} if model.config.is_encoder_decoder else {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False, **kwargs).logits.float()
    model.train(was_training)
    return logits


def append_blocks(model: nn.Module, n: int) -> list[nn.Module]:
    """Append n zero-output copies of the last block to the last block list; update the config.

    Raises:
        UserError: the copies would change the model's function (an unfamiliar block layout).
    """
    before = _probe_logits(model)
    _, blocks = block_lists(model)[-1]
    config = model.config
    hidden = config.get_text_config().hidden_size
    added = []
    for _ in range(n):
        block = copy.deepcopy(blocks[-1])
        if zero_output_projections(block, hidden) == 0:
            raise UserError(
                f"extra_head_layers: no output projection found in {type(block).__name__}",
                "use num_freeze_layers or trainable_patterns on this architecture",
            )
        index = len(blocks)
        for module in block.modules():  # the KV cache is indexed by layer
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
        blocks.append(block)
        added.append(block)
    key = "num_decoder_layers" if config.is_encoder_decoder else "num_hidden_layers"
    setattr(config, key, getattr(config, key) + n)
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types) + [config.layer_types[-1]] * n
    after = _probe_logits(model)
    if not torch.equal(before, after):
        raise UserError(
            f"extra_head_layers: the new {type(block).__name__} blocks change the model's output "
            f"(max difference {(before - after).abs().max().item():.3g})",
            "this block layout is not supported; use num_freeze_layers or trainable_patterns",
        )
    return added


# ---------------------------------------------------------------- the method


class Freeze:
    """Train a selected subset of the model's parameters (and optional new top blocks)."""

    name = "freeze"
    Options = FreezeOptions
    capabilities = Capabilities()
    default_lr = 1e-4

    def __init__(self, options: FreezeOptions) -> None:
        self.options = options

    def apply(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        o = self.options
        selected: list[nn.Parameter] = []
        if o.num_freeze_layers is not None:
            freeze_below(model, o.num_freeze_layers)
            selected += [p for p in model.parameters() if p.requires_grad]
        elif o.train_top_layers is not None:
            depth = len(all_blocks(model))
            if o.train_top_layers > depth:
                raise UserError(
                    f"method.train_top_layers={o.train_top_layers} but the model has {depth} blocks",
                    f"choose at most {depth}",
                )
            freeze_below(model, depth - o.train_top_layers)
            selected += [p for p in model.parameters() if p.requires_grad]
        elif o.head_only:
            selected += list(output_head_untied(model).parameters())
        selected += matching_parameters(model, o.trainable_patterns)
        if o.extra_head_layers:
            for block in append_blocks(model, o.extra_head_layers):
                selected += list(block.parameters())
        chosen = {id(p) for p in selected}
        for param in model.parameters():
            param.requires_grad_(id(param) in chosen)
        if not chosen:
            raise UserError("method freeze: the options select no parameter to train")
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        return default_param_groups(model, weight_decay)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        model = unwrap(model)
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def on_step(self, ctx: StepContext) -> bool:
        return False

    def save(
        self, model: nn.Module, tokenizer: Any, out_dir: Path, state_dict: dict[str, torch.Tensor]
    ) -> None:
        save_full_model(model, tokenizer, out_dir, state_dict)
