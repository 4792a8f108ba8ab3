"""DeepSpeed ZeRO stages 0-3, with CPU/NVMe offload, driven by tunesmith's own config.

    tunesmith train cfg.yaml strategy.name=deepspeed strategy.stage=3 --nproc-per-node 8
    deepspeed --num_gpus 8 -m tunesmith train cfg.yaml strategy.name=deepspeed

The engine does backward, accumulation, clipping and the optimizer step; this module builds its
JSON config from `train.*` (batch, accumulation, clipping, precision) and the options below, and
merges a raw DeepSpeed JSON (`deepspeed_config`) over it, refusing values that contradict
tunesmith's. The optimizer is the torch one `train.optimizer` names (DeepSpeed's own compile C++
on first use) unless `ds_cpu_adam` asks for DeepSpeedCPUAdam with optimizer offload.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tunesmith.config import option
from tunesmith.errors import UserError
from tunesmith.methods.base import Capabilities
from tunesmith.strategies import process_group as pg
from tunesmith.strategies.base import OptimizerFactory

Offload = Literal["none", "cpu", "nvme"]
# Keys tunesmith sets from `train.*`; a raw JSON may repeat them only with the same value.
OWNED_KEYS = (
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "train_batch_size",
    "gradient_clipping",
)


@dataclass
class DeepSpeedOptions:
    name: str = option("deepspeed", "DeepSpeed ZeRO data parallel (its own engine).")
    stage: int = option(
        2,
        "ZeRO stage: 0 off, 1 optimizer state, 2 + gradients, 3 + parameters partitioned.",
    )
    overlap_comm: bool = option(False, "Overlap gradient reduction with backward compute.")
    contiguous_gradients: bool = option(
        True, "Copy gradients into one contiguous buffer as they are produced."
    )
    offload_optimizer: Offload = option("none", "Optimizer state on cpu or nvme (stage >= 1).")
    offload_param: Offload = option("none", "Parameters on cpu or nvme (stage 3 only).")
    nvme_path: str | None = option(None, "Folder on a fast local NVMe drive for nvme offload.")
    zero3_init: bool = option(
        False, "Build the model already partitioned (deepspeed.zero.Init; stage 3 only)."
    )
    zero3_save_16bit_model: bool = option(
        True,
        "Stage 3: gather the weights in their training dtype for final/ (false: consolidate the "
        "fp32 master weights from a ZeRO checkpoint instead, slower).",
    )
    ds_cpu_adam: bool = option(
        False, "Use DeepSpeedCPUAdam with offload_optimizer=cpu (compiles C++ once, ~2 min)."
    )
    deepspeed_config: str | None = option(
        None, "A DeepSpeed JSON file merged over the generated config (batch keys must agree)."
    )


class DeepSpeed:
    """The DeepSpeed engine behind the strategy interface."""

    name = "deepspeed"
    Options = DeepSpeedOptions

    def __init__(self, options: DeepSpeedOptions, train_cfg: Any) -> None:
        self.options = options
        self.train_cfg = train_cfg
        self.precision = train_cfg.precision
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        self.rank, self.local_rank, self.world_size, self.device = pg.init_process_group(
            train_cfg.dist_timeout
        )
        self.config = build_config(options, train_cfg, self.world_size, self.device)
        self.engine: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check(self, capabilities: Capabilities, cfg: Any) -> list[str]:
        o, out = cfg.strategy, []
        if o.stage not in (0, 1, 2, 3):
            out.append(f"strategy.stage={o.stage}: DeepSpeed ZeRO has stages 0, 1, 2 and 3")
        if o.offload_param != "none" and o.stage != 3:
            out.append("strategy.offload_param needs strategy.stage=3")
        if o.offload_optimizer != "none" and o.stage == 0:
            out.append("strategy.offload_optimizer needs strategy.stage >= 1")
        if o.zero3_init and o.stage != 3:
            out.append("strategy.zero3_init needs strategy.stage=3")
        if "nvme" in (o.offload_param, o.offload_optimizer):
            if not o.nvme_path:
                out.append("nvme offload needs strategy.nvme_path (a folder on a local NVMe drive)")
            missing = async_io_problem()
            if missing:
                out.append(missing)
        if capabilities.dynamic_trainable:
            out.append(
                f"method {cfg.method.name} changes its trainable set during training, but the "
                "DeepSpeed engine fixes it when built: use strategy.name=ddp"
            )
        if cfg.model.quantization != "none":
            out.append(
                f"strategy deepspeed cannot partition bitsandbytes-quantized weights "
                f"(model.quantization={cfg.model.quantization}): use strategy.name=ddp"
            )
        if cfg.train.optimizer != "adamw" and o.ds_cpu_adam:
            out.append("strategy.ds_cpu_adam replaces train.optimizer: leave it at adamw")
        return out

    def model_init_context(self) -> contextlib.AbstractContextManager:
        if self.options.stage == 3 and self.options.zero3_init:
            return zero3_construction(self.config)
        return contextlib.nullcontext()

    def setup(
        self, model: nn.Module, build_optimizer: OptimizerFactory
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        import deepspeed

        optimizer = build_optimizer(model)
        if self.options.ds_cpu_adam and self.options.offload_optimizer == "cpu":
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(optimizer.param_groups, adamw_mode=True)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config
        )
        # The lr schedule drives the client optimizer's param_groups, which ZeRO's wrapper
        # shares, so the loop's scheduler works unchanged.
        return self.engine, optimizer

    def place_frozen(self, model: nn.Module) -> nn.Module:
        """ZeRO-3: an engine of its own with no optimizer partitions the copy like the policy
        (TRL's recipe for its reference model); stages 0-2 keep whole weights on every rank,
        so the copy is too (in the engine's compute dtype)."""
        if self.options.stage != 3:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}
            enabled = [k for k in dtype if self.config.get(k, {}).get("enabled")]
            return model.to(self.device, dtype[enabled[0]] if enabled else None)
        import deepspeed

        config = {k: v for k, v in self.config.items() if k not in ("optimizer", "scheduler")}
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()  # DeepSpeedEngine.eval returns None
        return engine

    def micro_batch(self, is_last: bool) -> contextlib.AbstractContextManager:
        if self.engine is not None and torch.is_grad_enabled():
            self.engine.set_gradient_accumulation_boundary(is_last)
        return contextlib.nullcontext()  # precision: the engine's bf16/fp16 sections

    def backward(self, loss: torch.Tensor) -> None:
        # The engine averages gradients over ranks; scale_wrt_gas=False stops it also dividing
        # by the accumulation steps, since the loss is already normalised per global step.
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> torch.Tensor:
        """The engine's step (clipping is the config's gradient_clipping); a non-finite global
        gradient norm skips the update.

        The ZeRO optimizers (stages 1-3, fp32 and bf16: `check_grad_overflow` is kept on) and the
        fp16/bf16 optimizers of stage 0 skip such a step themselves and report an inf norm. Stage
        0 in fp32 steps the plain torch optimizer, which would write NaN into every weight: its
        (already all-reduced) gradients are measured here, and when they are not finite the
        engine steps with the optimizer's update switched off (its bookkeeping and zero_grad
        still run), leaving weights and optimizer state untouched.
        """
        measured = None
        if self.options.stage == 0:
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            if grads:
                measured = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
                )
        skip = self.precision == "fp32" and measured is not None and not torch.isfinite(measured)
        with update_switched_off(self.engine.optimizer) if skip else contextlib.nullcontext():
            self.engine.step()
        if skip:
            self.engine.skipped_steps += 1  # as the engine counts the steps its optimizers skip
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            # Stage 0 in fp32 keeps no norm; the ZeRO optimizers always do (compute_grad_norm
            # is refused off in build_config).
            return measured if measured is not None else torch.tensor(0.0)
        return torch.tensor(float(norm))

    def on_trainable_change(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        return model  # refused in `check` for methods that change it

    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return pg.all_reduce_sum(x)

    def reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        return pg.all_reduce_sum(x) / self.world_size

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return pg.broadcast_from(x, src)

    def barrier(self) -> None:
        pg.barrier()

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        engine = self.engine
        if self.options.stage == 3:
            if self.options.zero3_save_16bit_model:
                state = engine._zero3_consolidated_16bit_state_dict()  # collective; rank 0 gets it
            else:
                state = self._fp32_state_from_checkpoint()
        else:
            state = engine.module.state_dict() if self.is_main else {}
        if not self.is_main:
            return {}
        return {k: v.detach().cpu() for k, v in state.items()}

    def _fp32_state_from_checkpoint(self) -> dict[str, torch.Tensor]:
        """Consolidate the fp32 master weights through a temporary ZeRO checkpoint."""
        import tempfile

        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            # Every rank must name the same folder: rank 0's choice is broadcast as bytes.
            name = torch.zeros(256, dtype=torch.uint8)
            if self.is_main:
                encoded = tmp.encode()
                name[: len(encoded)] = torch.tensor(list(encoded), dtype=torch.uint8)
            folder = bytes(pg.broadcast_from(name, 0).tolist()).rstrip(b"\0").decode()
            self.engine.save_checkpoint(folder, tag="final")
            pg.barrier()
            state = (
                get_fp32_state_dict_from_zero_checkpoint(folder, tag="final")
                if self.is_main
                else {}
            )
            pg.barrier()
        return state

    def save_resume(
        self,
        directory: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        names: Collection[str] | None = None,
    ) -> None:
        """The engine's own checkpoint (every rank writes its partitions) under directory/zero."""
        # Frozen parameters are skipped when the method keeps only its trainable state.
        self.engine.save_checkpoint(
            str(directory / "zero"), tag="state", exclude_frozen_parameters=names is not None
        )

    def load_resume(
        self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> None:
        self.engine.load_checkpoint(
            str(directory / "zero"),
            tag="state",
            load_optimizer_states=optimizer is not None,
            load_module_strict=False,
        )

    def close(self) -> None:
        import deepspeed.comm

        if pg.owns_default_group() and deepspeed.comm.is_initialized():
            # Through DeepSpeed, so it also drops the subgroups it cached: a later run in this
            # process would otherwise reach for groups of the destroyed one.
            deepspeed.comm.destroy_process_group()
        pg.destroy_owned_group()


@contextlib.contextmanager
def update_switched_off(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """`optimizer.step()` does nothing inside (an instance attribute shadows the method)."""
    optimizer.step = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del optimizer.step


@contextlib.contextmanager
def zero3_construction(config: dict[str, Any]) -> Iterator[None]:
    """Build a transformers model already partitioned over the ranks (ZeRO-3 `zero.Init`).

    transformers does the partitioning itself while an `HfDeepSpeedConfig` is alive: it
    constructs under `deepspeed.zero.Init`, initialises each module with its parameters
    gathered, and loads a checkpoint shard by shard into the partitions. (A bare `zero.Init`
    around `from_pretrained` would partition the parameters before the weights are loaded or
    initialised.) The config is dropped on exit, so later loads (rank 0 scoring the final model)
    are not partitioned.
    """
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    keep_alive = HfDeepSpeedConfig(config)  # transformers holds only a weak reference
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del keep_alive


def async_io_problem() -> str | None:
    """Why DeepSpeed's async_io op (NVMe offload) cannot run here, or None if it can."""
    from deepspeed.ops.op_builder import AsyncIOBuilder

    # DeepSpeed's probe compiles a test program with stderr redirected by file descriptor; where
    # sys.stderr has none (Jupyter, pytest's capture) it would report libaio missing.
    with contextlib.redirect_stderr(sys.__stderr__ or sys.stderr):
        if AsyncIOBuilder().is_compatible(verbose=False):
            return None
    return (
        "nvme offload needs DeepSpeed's async_io op, which needs libaio (library and headers, "
        "not found here): install libaio-dev (apt) or libaio-devel (dnf/yum), then run again "
        "(DeepSpeed compiles the op on first use); or offload to cpu"
    )


def resolve_accumulation(train_cfg: Any, world: int) -> int:
    """Micro-batches per optimizer step, as the loop resolves them (grad_accum or global batch)."""
    if train_cfg.global_batch_size is not None:
        return max(train_cfg.global_batch_size // (train_cfg.batch_size * world), 1)
    return train_cfg.grad_accum or 1


def build_config(
    options: DeepSpeedOptions, train_cfg: Any, world: int, device: torch.device
) -> dict[str, Any]:
    """The DeepSpeed JSON config for this run (the raw `deepspeed_config` merged over it).

    Raises:
        UserError: the raw JSON is unreadable, sets its own optimizer, or contradicts
            tunesmith's batch, accumulation or clipping values.
    """
    accum = resolve_accumulation(train_cfg, world)
    owned = {
        "train_micro_batch_size_per_gpu": train_cfg.batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": train_cfg.batch_size * accum * world,
        "gradient_clipping": float(train_cfg.max_grad_norm or 0.0),
    }
    zero: dict[str, Any] = {
        "stage": options.stage,
        "overlap_comm": options.overlap_comm,
        "contiguous_gradients": options.contiguous_gradients,
    }
    pin = device.type == "cuda"
    if options.offload_optimizer != "none":
        zero["offload_optimizer"] = offload_section(options.offload_optimizer, options, pin)
    if options.offload_param != "none":
        zero["offload_param"] = offload_section(options.offload_param, options, pin)
    if options.stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = options.zero3_save_16bit_model
    config: dict[str, Any] = {
        **owned,
        "zero_optimization": zero,
        "bf16": {"enabled": train_cfg.precision in ("bf16-mixed", "bf16-pure")},
        "fp16": {"enabled": train_cfg.precision == "fp16-mixed"},
        # tunesmith passes a torch optimizer; DeepSpeed accepts it with these two switches.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if options.deepspeed_config:
        raw = read_raw_config(Path(options.deepspeed_config))
        check_owned_keys(raw, owned, options.deepspeed_config)
        config = deep_merge(config, {k: v for k, v in raw.items() if k not in OWNED_KEYS})
        check_skip_switches(config, options.deepspeed_config)
    return config


def check_skip_switches(config: dict[str, Any], source: str) -> None:
    """Refuse raw switches that would make the engine apply non-finite updates or hide the norm
    tunesmith uses to count skipped steps (strategies/base.py: step)."""
    for section, key in (
        ("bf16", "check_grad_overflow"),
        ("zero_optimization", "compute_grad_norm"),
    ):
        if config.get(section, {}).get(key, True) is False:
            raise UserError(
                f"{source}: {section}.{key}=false, but tunesmith needs it on to skip updates "
                "whose gradients are not finite",
                f"remove {section}.{key} from the JSON",
            )


def offload_section(target: str, options: DeepSpeedOptions, pin: bool) -> dict[str, Any]:
    section: dict[str, Any] = {"device": target, "pin_memory": pin}
    if target == "nvme":
        section["nvme_path"] = options.nvme_path
    return section


def read_raw_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"strategy.deepspeed_config={path}: file not found", "check the path")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a DeepSpeed config is a JSON object")
    for key in ("optimizer", "scheduler"):
        if key in raw:
            raise UserError(
                f"{path}: `{key}` is set, but tunesmith builds the {key} from train.*",
                f"remove `{key}` and set train.optimizer / train.lr_schedule instead",
            )
    return raw


def check_owned_keys(raw: dict[str, Any], owned: dict[str, Any], source: str) -> None:
    """A raw value for a tunesmith-owned key must equal tunesmith's (or be "auto")."""
    names = {
        "train_micro_batch_size_per_gpu": "train.batch_size",
        "gradient_accumulation_steps": "train.grad_accum",
        "train_batch_size": "train.batch_size x grad_accum x processes",
        "gradient_clipping": "train.max_grad_norm",
    }
    for key in OWNED_KEYS:
        if key in raw and raw[key] != "auto" and float(raw[key]) != float(owned[key]):
            raise UserError(
                f"{source}: {key}={raw[key]} contradicts {names[key]} (= {owned[key]})",
                f'remove {key} from the JSON or set it to "auto"',
            )


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, recursively for nested sections."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
