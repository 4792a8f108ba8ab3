"""Registry of training objectives: `objective.name` -> implementation class.

An objective's registry key, module name and config `name` are the same string. To add one, write a
module with a class that satisfies `tunesmith.objectives.base.Objective` and add it here.
"""

from tunesmith.objectives.dpo import Dpo
from tunesmith.objectives.kto import Kto
from tunesmith.objectives.orpo import Orpo
from tunesmith.objectives.reward import Reward
from tunesmith.objectives.sft import Sft
from tunesmith.objectives.simpo import Simpo

OBJECTIVES: dict[str, type] = {
    "sft": Sft,
    "dpo": Dpo,
    "orpo": Orpo,
    "simpo": Simpo,
    "kto": Kto,
    "reward": Reward,
}
