"""Registry of fine-tuning methods: `method.name` -> implementation class.

A method's registry key, module name and config `name` are the same string. To add one, write a
module with a class that satisfies `tunesmith.methods.base.Method`, add it here, and make it pass
the shared contract tests (tests/integration/test_methods_contract.py).
"""

from tunesmith.methods.full import Full

METHODS: dict[str, type] = {
    "full": Full,
}
