"""Token usage in one normalised shape, whatever the provider reported.

Invariant (OpenAI semantics): ``prompt_tokens`` is *all* input tokens, cached reads and cache
writes included; ``cached_tokens`` (cache reads) and ``cache_write_tokens`` are subsets of it.
Anthropic reports ``input_tokens`` *excluding* cache reads and writes, so ``from_anthropic`` adds
them back, and ``to_anthropic`` takes them out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, u: dict[str, Any] | None) -> Usage:
        if not u:
            return cls()
        details = u.get("prompt_tokens_details") or {}
        return cls(
            prompt_tokens=int(u.get("prompt_tokens") or 0),
            completion_tokens=int(u.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            cache_write_tokens=int(details.get("cache_write_tokens") or 0),
        )

    @classmethod
    def from_anthropic(cls, u: dict[str, Any] | None) -> Usage:
        if not u:
            return cls()
        read = int(u.get("cache_read_input_tokens") or 0)
        write = int(u.get("cache_creation_input_tokens") or 0)
        return cls(
            prompt_tokens=int(u.get("input_tokens") or 0) + read + write,
            completion_tokens=int(u.get("output_tokens") or 0),
            cached_tokens=read,
            cache_write_tokens=write,
        )

    def merge_max(self, other: Usage) -> None:
        """Anthropic streams report usage in pieces (message_start, message_delta): keep the max."""
        self.prompt_tokens = max(self.prompt_tokens, other.prompt_tokens)
        self.completion_tokens = max(self.completion_tokens, other.completion_tokens)
        self.cached_tokens = max(self.cached_tokens, other.cached_tokens)
        self.cache_write_tokens = max(self.cache_write_tokens, other.cache_write_tokens)

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }
        if self.cache_write_tokens:
            out["prompt_tokens_details"]["cache_write_tokens"] = self.cache_write_tokens
        return out

    def to_anthropic(self) -> dict[str, Any]:
        return {
            "input_tokens": max(0, self.prompt_tokens - self.cached_tokens - self.cache_write_tokens),
            "output_tokens": self.completion_tokens,
            "cache_read_input_tokens": self.cached_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
        }
