"""Registry of fine-tuning methods: `method.name` -> implementation class.

A method's registry key, module name and config `name` are the same string. To add one, write a
module with a class that satisfies `tunesmith.methods.base.Method`, add it here, and make it pass
the shared contract tests (tests/integration/test_methods_contract.py).
"""

from tunesmith.methods.freeze import Freeze
from tunesmith.methods.full import Full
from tunesmith.methods.green import Green
from tunesmith.methods.ia3 import Ia3
from tunesmith.methods.llama_adapter import LlamaAdapter
from tunesmith.methods.lora import Lora
from tunesmith.methods.prefix import Prefix
from tunesmith.methods.prompt import Prompt

METHODS: dict[str, type] = {
    "full": Full,
    "freeze": Freeze,
    "lora": Lora,
    "prefix": Prefix,
    "prompt": Prompt,
    "llama_adapter": LlamaAdapter,
    "ia3": Ia3,
    "green": Green,
}
