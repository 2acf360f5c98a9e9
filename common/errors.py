"""The error hierarchy: each error knows its HTTP status, error-event code and whether a retry may help."""

from __future__ import annotations


class PbxError(Exception):
    status = 500
    code = "INTERNAL_ERROR"
    retryable = False

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, str]:
        """The JSON error body of the API document."""
        return {"error": self.message, "code": self.code, "details": self.details}


class BadCommand(PbxError):
    status = 400
    code = "BAD_REQUEST"


class CallNotFound(PbxError):
    status = 404
    code = "CALL_NOT_FOUND"


class DuplicateCall(PbxError):
    status = 409
    code = "DUPLICATE_CALL"


class Unauthorized(PbxError):
    status = 401
    code = "UNAUTHORIZED"


class Forbidden(PbxError):
    status = 403
    code = "FORBIDDEN"


class RateLimited(PbxError):
    """A client sent more than its share (commands or audio frames per second)."""

    status = 429
    code = "RATE_LIMITED"
    retryable = True


class Unavailable(PbxError):
    status = 503
    code = "SERVICE_UNAVAILABLE"
    retryable = True


class ProviderError(PbxError):
    status = 502
    code = "PROVIDER_ERROR"
    retryable = True


class ProviderRefused(ProviderError):
    """A speech provider answered with an error of its own (or cannot start with the option given): permanent
    for this request, so it is reported, not retried. `code` is the provider's code, or an HTTP-like one."""

    retryable = False

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.status = code
