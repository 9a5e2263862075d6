"""Upstream providers: the Provider protocol, the OpenAI and Anthropic adapters, translation, routing."""
