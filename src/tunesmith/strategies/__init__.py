"""Registry of strategies: `strategy.name` -> implementation class (see strategies/base.py)."""

from tunesmith.strategies.ddp import DDP
from tunesmith.strategies.deepspeed import DeepSpeed
from tunesmith.strategies.fsdp import FSDP
from tunesmith.strategies.single import Single

STRATEGIES: dict[str, type] = {
    "single": Single,
    "ddp": DDP,
    "fsdp": FSDP,
    "deepspeed": DeepSpeed,
}
