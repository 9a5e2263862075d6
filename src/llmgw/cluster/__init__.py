"""Shared state for several llmgw instances (Redis): budget leases. Imported only when configured."""
