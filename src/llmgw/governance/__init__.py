"""Governance: virtual keys (and, as they grow, customers, teams, budgets and rate limits)."""
