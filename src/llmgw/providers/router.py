"""Routing: model names to provider chains, retries with backoff and jitter, fallbacks, deadlines.

``provider/model`` names one target; an alias names a fallback chain of targets tried in order.
Each target gets up to ``1 + retry.max_retries`` attempts on retryable failures (connect errors,
timeouts, 408/409/429/5xx); an upstream ``Retry-After`` is honoured when it is at most
``retry.max_retry_after`` seconds and fits in the request's deadline, otherwise the router moves
on to the next target at once. Non-retryable errors (the upstream rejected the request itself)
end the call. Streams are only ever retried before their first byte: ``attempt`` returns once the
upstream answered 200 and its first bytes are in (a stall before them is a failed attempt), and
nothing after that passes through here. When the attempts are spent, the error says
``x-should-retry: false`` (and a ``Retry-After`` of at most ``retry.max_retry_after``), so an SDK's
own retries do not multiply the upstream calls; a 429 or 529 goes out as the provider's own answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from ..config import Config
from ..errors import ConfigError, LlmgwError, ModelNotFound, UpstreamError, UpstreamRejected, UpstreamTimeout
from .anthropic import AnthropicProvider
from .base import AttemptFailed, Provider, Target
from .demo import DemoProvider
from .openai import OpenAIProvider
from .responses import Origins
from .upstream import UpstreamClient

log = logging.getLogger("llmgw.router")
#: seconds a provider's models listing is kept before it is asked again
MODELS_TTL = 600.0
T = TypeVar("T")


class Router:
    def __init__(self, config: Config, client: UpstreamClient, environ: Mapping[str, str]) -> None:
        self.config = config
        self.retry = config.retry
        self.aliases = config.aliases
        self.providers: dict[str, Provider] = {}
        self.timeouts: dict[str, float] = {}
        self.keyless: dict[str, str] = {}  # provider -> the variable(s) that would give it its API key
        self.origins = Origins()  # which provider stores each Responses API response id relayed
        self._served: dict[str, tuple[float, list[str]]] = {}  # provider -> (when, models it lists)
        for name, pc in config.providers.items():
            if not pc.enabled:
                continue
            self.timeouts[name] = pc.timeout
            if pc.type == "demo":
                self.providers[name] = DemoProvider(name)
                continue
            keys = pc.resolve_keys(environ)
            if not keys and pc.keys:
                envs = [k.env for k in pc.keys]
                log.warning("provider %s: none of its API key variables (%s) is set", name, ", ".join(envs))
                self.keyless[name] = envs[0] if len(envs) == 1 else "one of " + ", ".join(envs)
            if pc.type == "anthropic":
                self.providers[name] = AnthropicProvider(pc, client, keys, config.defaults.max_tokens)
            else:
                self.providers[name] = OpenAIProvider(pc, client, keys)

    def resolve(self, model: str) -> list[Target]:
        chain = self.aliases.get(model)
        if chain is None:
            if "/" not in model:
                known = ", ".join(sorted(self.aliases)) or "none"
                raise ModelNotFound(f"model {model!r} is neither provider/model nor an alias (aliases: {known})",
                                    param="model")
            chain = [model]
        targets = []
        for qualified in chain:
            pname, _, mname = qualified.partition("/")
            provider = self.providers.get(pname)
            if provider is None:
                known = ", ".join(sorted(self.providers))
                raise ModelNotFound(f"unknown provider {pname!r} in model {qualified!r} (providers: {known})",
                                    param="model")
            if not mname or not provider.serves(mname):
                raise ModelNotFound(f"provider {pname!r} does not serve model {mname!r}", param="model")
            targets.append(Target(provider, mname))
        if self.keyless:
            usable = [t for t in targets if t.provider.name not in self.keyless]
            if not usable:  # never forward without the key only to relay the provider's 401
                name = targets[0].provider.name
                raise ConfigError(f"provider {name} has no API key (set {self.keyless[name]})",
                                  code="provider_no_api_key", status=503, headers={"x-should-retry": "false"})
            targets = usable  # a fallback chain skips the providers that have no key
        return targets

    def catalogue(self) -> list[str]:
        names = list(self.aliases)
        for pname, p in self.providers.items():
            names.extend(f"{pname}/{m}" for m in p.listed_models())
        return names

    async def served_models(self, priced: Iterable[str]) -> list[tuple[str, str]]:
        """``(model id, owner)`` of everything a client can ask for: the aliases, then per provider
        its declared models, else what its models endpoint lists (cached ``MODELS_TTL`` seconds),
        else (no key to ask with, or the endpoint failed) the price list's models of its type."""
        out = [(a, "llmgw") for a in self.aliases]
        now = time.monotonic()
        names = list(priced)
        for pname, p in self.providers.items():
            declared = p.listed_models()
            if declared:
                out.extend((f"{pname}/{m}", pname) for m in declared)
                continue
            cached = self._served.get(pname)
            if cached is None or now - cached[0] > MODELS_TTL:
                models = await self._ask_models(p)
                if models is None:
                    prefixes = (f"{p.type}/", f"{pname}/")
                    models = sorted({k.split("/", 1)[1] for k in names if k.startswith(prefixes)})
                cached = self._served[pname] = (now, [m for m in models if p.serves(m)])
            out.extend((f"{pname}/{m}", pname) for m in cached[1])
        return out

    async def _ask_models(self, p: Provider) -> list[str] | None:
        ask = getattr(p, "list_models", None)
        if ask is None:
            return None
        try:
            return await ask(min(self.timeouts.get(p.name, 10.0), 10.0))
        except (LlmgwError, AttemptFailed, OSError, TimeoutError) as e:
            log.warning("provider %s: cannot list its models (%s); /v1/models shows its price-list models",
                        p.name, getattr(e, "message", e))
            return None

    def backoff(self, retry: int) -> float:
        cap = min(self.retry.backoff_max, self.retry.backoff_base * (2 ** retry))
        return random.uniform(cap / 2, cap)  # "equal jitter": never zero, never synchronised

    async def run(self, targets: list[Target], attempt: Callable[[Target, float], Awaitable[T]],
                  deadline: float, call: Any) -> T:
        """Try ``attempt`` over the chain; ``call.attempts``/``provider``/``upstream_model`` are updated,
        and ``call.upstream_seconds`` grows by the time spent in attempts."""
        last: AttemptFailed | None = None
        for target in targets:
            call.provider = target.provider.name
            call.upstream_model = target.model
            per_attempt = self.timeouts.get(target.provider.name, 600.0)
            for retry in range(self.retry.max_retries + 1):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                call.attempts += 1
                started = time.perf_counter()
                try:
                    try:
                        return await attempt(target, min(per_attempt, remaining))
                    finally:  # attempts only, backoff excluded: llmgw_upstream_duration_seconds
                        call.upstream_seconds += time.perf_counter() - started
                except AttemptFailed as e:
                    last = e
                    log.info("attempt %d on %s failed: %s", call.attempts, target.qualified, e.message)
                    if retry == self.retry.max_retries:
                        break
                    delay = self.backoff(retry)
                    if e.retry_after is not None:
                        if e.retry_after > self.retry.max_retry_after:
                            break  # do not park the client: fall back now
                        delay = max(delay, e.retry_after)
                    if delay >= deadline - time.monotonic():
                        break
                    await asyncio.sleep(delay)
        # The gateway has made its attempts: the answer tells SDKs not to add theirs
        # (x-should-retry: false stops both official SDKs), so one client request costs at most
        # the configured attempts upstream. A short Retry-After of the last answer goes along.
        stop = {"x-should-retry": "false"}
        if last is not None and last.retry_after is not None and last.retry_after <= self.retry.max_retry_after:
            stop["retry-after"] = str(math.ceil(last.retry_after))
        if last is None or last.timeout or time.monotonic() >= deadline:
            what = last.message if last else "no attempt fitted in the request deadline"
            raise UpstreamTimeout(f"upstream timed out after {call.attempts} attempt(s): {what}",
                                  code="upstream_timeout", headers=stop)
        if isinstance(last.error, UpstreamRejected):  # a 429/529: the provider's own typed answer
            last.error.headers.update(stop)
            raise last.error
        code = last.error.code if last.error is not None and last.error.code else "upstream_unavailable"
        raise UpstreamError(f"all {call.attempts} upstream attempt(s) failed; last: {last.message}", code=code,
                            headers=stop)

    async def close(self) -> None:
        for p in self.providers.values():
            await p.close()
