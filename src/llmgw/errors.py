"""One exception tree for the whole project.

Every error a user can meet is an ``LlmgwError`` subclass that knows its HTTP status, its
OpenAI envelope ``type``/``code``, its Anthropic envelope type and the CLI exit code. Front ends
never invent error shapes: the server renders ``openai_body()`` / ``anthropic_body()``, the CLI
prints the message and exits with ``exit_code``. An error about one field of the input names it in
``param`` and its message reads ``param: problem`` (``period: expected one of ...``); each front end
shows the field in its own terms through ``about`` (``--period``, the JSON field, the TOML key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class LlmgwError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str | None = None
    anthropic_type: str = "api_error"
    exit_code: int = 1
    #: an upstream's own error body and its dialect ("openai" | "anthropic"): a client of that
    #: dialect gets the body as the provider wrote it (redacted), others the envelope of ``message``
    upstream_body: bytes | None = None
    upstream_dialect: str | None = None
    #: the answer closes the connection (what is left of the request on it cannot be trusted)
    close_connection: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def about(self, name: Callable[[str], str]) -> str:
        """The message, its field named as a front end calls it: a message about field ``param`` reads
        ``param: problem``; ``name(param)`` replaces the prefix (the CLI shows ``--period: ...``)."""
        if self.param and self.message.startswith(self.param + ": "):
            return name(self.param) + self.message[len(self.param):]
        return self.message

    def openai_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}


# ---- client errors (4xx) -------------------------------------------------------------------


class InvalidRequest(LlmgwError):
    status = 400
    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    exit_code = 2


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"
    anthropic_type = "request_too_large"


class BodyTimeout(InvalidRequest):
    """The client did not send its whole request body in time; the connection is closed after the answer."""

    status = 408
    code = "body_timeout"
    close_connection = True


class Unauthorized(LlmgwError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    anthropic_type = "authentication_error"
    exit_code = 3


class PermissionDenied(LlmgwError):
    status = 403
    type = "permission_error"
    anthropic_type = "permission_error"
    exit_code = 3


class ModelNotFound(LlmgwError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    anthropic_type = "not_found_error"
    exit_code = 2


class NotFound(LlmgwError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    anthropic_type = "not_found_error"
    exit_code = 4


class MethodNotAllowed(LlmgwError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    anthropic_type = "invalid_request_error"


# ---- upstream errors (5xx, or the upstream's own 4xx passed through) ------------------------


class UpstreamError(LlmgwError):
    status = 502
    type = "upstream_error"
    anthropic_type = "api_error"
    exit_code = 5


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_timeout"
    anthropic_type = "timeout_error"


class UpstreamRejected(LlmgwError):
    """The provider answered a 4xx about the request itself (or a 429/529 that outlasted the
    gateway's retries); passed on with its status, type and, to a client of the provider's dialect,
    its own body."""

    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    exit_code = 5

    def __init__(self, message: str, *, status: int, type: str | None = None, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None,
                 upstream_body: bytes | None = None, upstream_dialect: str | None = None) -> None:
        super().__init__(message, code=code, param=param, status=status, headers=headers)
        if type:
            self.type = type
        self.anthropic_type = _ANTHROPIC_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        self.upstream_body = upstream_body
        self.upstream_dialect = upstream_dialect


# ---- local (CLI / config) errors ------------------------------------------------------------


class ConfigError(LlmgwError):
    """A configuration file problem; message names the file and the key."""

    status = 500
    type = "config_error"
    exit_code = 2


class UsageError(LlmgwError):
    status = 400
    type = "usage_error"
    exit_code = 2


class Conflict(UsageError):
    """The operation clashes with what exists: an id taken (``already_exists``), a revoked key."""

    status = 409
    code = "already_exists"


class NoHome(NotFound):
    """A command that only reads (or changes what exists) was pointed at a path that is not an llmgw
    home: no database there. Nothing is created; the message names the path."""

    code = "no_home"


class ResourceError(LlmgwError):
    """Something on this machine that llmgw needs cannot be used: the listening address (in use,
    not available), the home directory (a file, not writable, the disk full) or its database
    (corrupt, unopenable). The message names it."""

    type = "resource_error"
    exit_code = 2


class ServiceUnavailable(LlmgwError):
    """The gateway cannot take the request now because it could not record it: the ledger writer is
    down, restarting, or cannot commit (disk full, database locked). Refused before any upstream
    attempt (``ledger_unavailable``); ``ledger_timeout`` when the row of an answered request was not
    committed within ``server.request_timeout`` (the row stays queued and is written once the ledger
    recovers). 503 with a short ``Retry-After``: the SDKs retry it."""

    status = 503
    type = "service_unavailable"
    code = "ledger_unavailable"
    anthropic_type = "api_error"
    exit_code = 5

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"retry-after": "1"})


_ANTHROPIC_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
