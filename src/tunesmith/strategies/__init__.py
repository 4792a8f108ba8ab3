"""Registry of strategies: `strategy.name` -> implementation class (see strategies/base.py)."""

from tunesmith.strategies.single import Single

STRATEGIES: dict[str, type] = {
    "single": Single,
}
