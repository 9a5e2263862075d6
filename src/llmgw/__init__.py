"""llmgw: a self-hosted LLM gateway with virtual keys, budgets, caching and an exact cost ledger."""

__version__ = "0.1.0"
