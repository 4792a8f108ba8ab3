"""The reference policy of DPO and KTO, in the three forms a run can afford.

- Adapter methods (LoRA, QLoRA, DoRA, IA3, prefix, prompt, LLaMA-Adapter): the policy itself with its
  adapters disabled (peft's `disable_adapter`), so no second copy of the base is held (the TRL-PEFT
  recipe). The adapters start as the identity, so this is exactly the starting policy.
- Full and freeze: a frozen copy of the starting model in eval mode, placed like the policy by
  the strategy (`place_frozen`): on its device; sharded per parameter on FSDP2, partitioned by
  an engine of its own on ZeRO-3.
- `objective.precompute_reference: true` (and on ZeRO-3 with `zero3_init`, where no whole copy
  exists): the reference log-probs of every training and validation
  example, computed in one pass with the starting policy before the first step and cached next to
  the tokenised data, so training holds one model.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.methods.base import Capabilities, unwrap
from tunesmith.objectives.logps import response_logps


class AdapterDisabled:
    """The policy with its adapters switched off."""

    def logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), unwrap(model).disable_adapter():
            return response_logps(model, batch)[0]

    def prepare(self, model: nn.Module, data: Any, strategy: Any, batch_size: int, log: Any) -> Any:
        return self

    def describe(self) -> dict[str, Any]:
        return {"kind": "adapters disabled"}


class FrozenCopy:
    """A frozen copy of the starting model, copied before the strategy wraps the policy and
    placed like it (`Strategy.place_frozen`: sharded on FSDP2 and ZeRO-3)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(unwrap(model)).eval()
        self.model.requires_grad_(False)

    def logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return response_logps(self.model, batch)[0]

    def prepare(self, model: nn.Module, data: Any, strategy: Any, batch_size: int, log: Any) -> Any:
        self.model = strategy.place_frozen(self.model)
        log(
            f"reference: a frozen copy of the starting model, placed by strategy {strategy.name} "
            f"({100 * weights_share(self.model):.0f}% of its weights on each process)"
        )
        return self

    def describe(self) -> dict[str, Any]:
        return {"kind": "frozen copy", "weights_share_per_process": weights_share(self.model)}


def weights_share(model: nn.Module) -> float:
    """This process's share of a model's parameter elements: 1.0 when whole, about 1/N when
    sharded (FSDP2 keeps a DTensor's local shard, ZeRO-3 a partition in `ds_tensor`)."""
    local = total = 0
    for p in model.parameters():
        total += getattr(p, "ds_numel", p.numel())
        held = p.ds_tensor if hasattr(p, "ds_tensor") else getattr(p, "_local_tensor", p)
        local += held.numel()
    return local / max(total, 1)


class Precomputed:
    """Reference log-probs computed once before training and carried by every batch."""

    def __init__(self, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = hashlib.sha256(
            json.dumps(fingerprint, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]

    def logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["ref_logps"]

    def describe(self) -> dict[str, Any]:
        return {"kind": "precomputed log-probs"}

    def prepare(
        self, model: nn.Module, data: Any, strategy: Any, batch_size: int, log: Any
    ) -> Precomputed:
        """Fill `ref_logps` of every train and validation example: from the cache next to the
        tokenised data when it holds them, else by one no-grad pass of the starting policy."""
        sets = {"train": data.train.examples, "validation": data.validation}
        path = None if data.cache_path is None else data.cache_path / f"ref-{self.fingerprint}.npz"
        if path is not None and path.is_file():
            with np.load(path) as arrays:
                for name, examples in sets.items():
                    _attach(examples, arrays[name])
            log(f"reference log-probs: read from the cache ({path.name})")
            return self
        values = {
            name: reference_pass(model, ex, strategy, batch_size, data.pad_id)
            for name, ex in sets.items()
        }
        for name, examples in sets.items():
            _attach(examples, values[name])
        if path is not None and strategy.is_main:
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, **values)
            tmp.replace(path)
        strategy.barrier()
        log(f"reference log-probs: computed for {sum(len(e) for e in sets.values())} examples")
        return self


def _attach(examples: list[Any], values: np.ndarray) -> None:
    for example, row in zip(examples, values.tolist()):
        example.ref_logps = row


@torch.no_grad()
def reference_pass(
    model: nn.Module, examples: list[Any], strategy: Any, batch_size: int, pad_id: int
) -> np.ndarray:
    """(examples, rows per example) summed response log-probs under `model`, every rank computing
    a strided share (each the same number of forwards: sharded engines gather in each) and the
    shares summed across ranks."""
    from tunesmith.data.loader import collate

    rows = 2 if examples and examples[0].rejected_ids is not None else 1
    out = torch.zeros(len(examples), rows, dtype=torch.float64, device=strategy.device)
    if not examples:
        return out.cpu().numpy()
    mine = list(range(strategy.rank, len(examples), strategy.world_size))
    share = -(-len(examples) // strategy.world_size)
    mine += [mine[0] if mine else 0] * (share - len(mine))  # repeats add nothing: scaled by 0
    keep = [1.0] * len(range(strategy.rank, len(examples), strategy.world_size))
    keep += [0.0] * (share - len(keep))
    was_training = model.training
    model.eval()
    for start in range(0, share, batch_size):
        index = mine[start : start + batch_size]
        batch = collate([examples[i] for i in index], pad_id, False)
        batch = {k: v.to(strategy.device) for k, v in batch.items() if k != "ref_logps"}
        with strategy.micro_batch(is_last=True):
            logps, _ = response_logps(model, batch)
        per_example = logps.double().reshape(rows, -1).T  # chosen rows first, then rejected
        weight = torch.tensor(keep[start : start + batch_size], device=strategy.device)
        out.index_add_(
            0, torch.tensor(index, device=strategy.device), per_example * weight[:, None]
        )
    model.train(was_training)
    return strategy.reduce_sum(out).cpu().numpy()


def build_reference(
    objective: Any, capabilities: Capabilities, model: nn.Module, cfg: Any
) -> AdapterDisabled | FrozenCopy | Precomputed | None:
    """The reference an objective needs, for this method, before the strategy wraps `model`."""
    if not objective.needs_reference:
        return None
    if getattr(cfg.objective, "precompute_reference", False):
        from tunesmith.models.load import base_model_record

        return Precomputed(
            {
                "model": base_model_record(cfg.model),
                "precision": cfg.train.precision,
                "method": capabilities.adapter_only_save,
            }
        )
    if capabilities.adapter_only_save:
        return AdapterDisabled()
    return FrozenCopy(model)
