"""One exception tree for batchrun; `exit_code` is what `batchrun` exits with when one escapes.

    BatchrunError (1)
    ├── UsageError (2)               a bad option or option value
    │   ├── ChoiceError (2)          a setting outside its choices (+ setting, choices)
    │   └── MissingDependencyError (2)  an optional package is missing (+ extra)
    ├── ManifestError (2)            a manifest or a file it reads is invalid; every problem
    ├── ConfigError (3)              no token, a bad API base
    │   └── UnreachableError (3)     no call reaches the API (refused, DNS, TLS)
    ├── StateError (2)               the run folder's state cannot be used
    │   ├── RunFolderInUse (2)       another process holds the folder
    │   └── OriginMismatch (2)       the folder holds results from another API (or the simulator)
    ├── CompareError (2)             compare was given inputs it cannot use
    ├── BudgetReached (4)            the run stopped at its cost cap (max_cost_usd)
    ├── BucketError (1)              an S3 bucket refused or failed a call (+ bucket, key, fix)
    │   └── BucketUrlError (2)       an s3:// location that is not one
    ├── InputDeliveryError (1)       a local input file could not be made ready to send
    └── ApiError (1)                 an error answer from the API, or none at all
        ├── AcceptedWithError        a submit's 200 with a request id and an error_code
        ├── AuthError (3)            401/403, 400004, 403001
        ├── InvalidInputError        400/422, 400001
        ├── NotFoundError            404, 404001
        ├── RateLimitedError         429 (+ retry_after)
        ├── InsufficientBalanceError (3)  402, 400002
        ├── ServerError              5xx, 500001
        └── TransportError           no usable answer (+ maybe_sent, unreachable)

cli.main is the one place that turns these into exit codes and messages.
"""

from __future__ import annotations


class BatchrunError(Exception):
    """Base of every foreseeable batchrun error; the CLI prints it without a traceback."""

    exit_code = 1


class UsageError(BatchrunError):
    """Bad command-line usage or option value."""

    exit_code = 2


class ManifestError(BatchrunError):
    """A manifest (or a file it reads) is invalid; carries every problem found."""

    exit_code = 2

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ConfigError(BatchrunError):
    """Missing or wrong configuration (no token, bad API base)."""

    exit_code = 3


class UnreachableError(ConfigError):
    """No call has reached the API for a while: connections refused, host name unknown, TLS
    failing. Nothing was sent, so nothing was billed; the same command resumes."""

    exit_code = 3

    def __init__(self, message: str, *, base_url: str = "", cause: str = "") -> None:
        self.base_url = base_url
        self.cause = cause
        super().__init__(message)

    @classmethod
    def at(cls, base_url: str, cause: str) -> UnreachableError:
        """`cannot reach the API at BASE: CAUSE`."""
        return cls(f"cannot reach the API at {base_url}: {cause}", base_url=base_url, cause=cause)


class StateError(BatchrunError):
    """The run folder's state cannot be used."""

    exit_code = 2


class RunFolderInUse(StateError):
    """Another batchrun process holds the run folder."""


class OriginMismatch(StateError):
    """The run folder holds results from another origin (an API base, or the simulator)."""


class ApiError(BatchrunError):
    """An error answer from the RunComfy API (or no answer at all).

    Never carries the token: messages are built from the endpoint path, status and body only.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        status: int | None = None,
        error_code: int | None = None,
        detail: object = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.endpoint = endpoint
        self.status = status
        self.error_code = error_code
        self.detail = detail
        self.request_id = request_id  # a request id the error answer carried, if any
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.endpoint:
            parts.append(self.endpoint)
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.error_code is not None:
            parts.append(f"error_code {self.error_code}")
        prefix = " ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._render()!r})"


class AuthError(ApiError):
    """401/403 or error_code 400004/403001: the token is missing, wrong or expired."""

    exit_code = 3


class AcceptedWithError(ApiError):
    """A submit answered 200 with a request id and a non-zero error_code: it may run and be
    billed, so its request id is kept and read like any other."""


class InvalidInputError(ApiError):
    """400/422: the inputs do not match the model's schema, or the model id is unknown."""


class NotFoundError(ApiError):
    """404/404001: the request id is unknown, deleted or expired."""


class RateLimitedError(ApiError):
    """429: too many requests; `retry_after` is the server's wish in seconds, if it said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class InsufficientBalanceError(ApiError):
    """402 or error_code 400002: the account cannot pay for the job."""

    exit_code = 3


class ServerError(ApiError):
    """5xx or error_code 500001: retry with backoff."""


class TransportError(ApiError):
    """No usable HTTP answer: refused, reset, timed out, or a body that is not JSON.

    `maybe_sent` is True when the request may have reached the server (a read timeout or a
    connection dropped after sending), which makes a submit ambiguous.
    """

    def __init__(
        self, message: str, *, maybe_sent: bool = False, unreachable: str = "", **kw: object
    ) -> None:
        self.maybe_sent = maybe_sent
        # Why no connection could be made (refused, DNS, TLS); empty when one was.
        self.unreachable = unreachable
        super().__init__(message, **kw)  # type: ignore[arg-type]


class CompareError(BatchrunError):
    """`compare` was given inputs it cannot use."""

    exit_code = 2


class BudgetReached(BatchrunError):
    """The run stopped submitting at its cost cap; a rerun with a higher cap continues."""

    exit_code = 4


class InputDeliveryError(BatchrunError):
    """A job's local input file could not be read, uploaded or signed at submit time: nothing
    was sent. `retry`: trying again later may work (a bucket that failed), else the job fails
    (the file changed or went away since the plan was made)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        self.retry = retry
        super().__init__(message)


class ChoiceError(UsageError):
    """A setting names something outside its choices: `setting`, `values` and `choices` say
    which (the command layer names the option)."""

    def __init__(
        self,
        message: str,
        *,
        setting: str = "",
        values: list[str] | None = None,
        choices: list[str] | None = None,
    ) -> None:
        self.setting = setting
        self.values = values or []
        self.choices = choices or []
        super().__init__(message)


class MissingDependencyError(UsageError):
    """A feature needs an optional package that is not installed; `extra` is the batchrun
    extra that brings it (the command layer says how to install it)."""

    def __init__(self, message: str, *, package: str = "", extra: str = "") -> None:
        self.package = package
        self.extra = extra
        super().__init__(message)


class BucketError(BatchrunError):
    """An S3 (or S3-compatible) bucket refused or failed a call after its retries: `bucket`,
    `key`, `what` failed and the `fix`. Never carries a signature or a credential."""

    def __init__(self, message: str, *, bucket: str = "", key: str = "", what: str = "",
                 fix: str = "") -> None:  # fmt: skip
        self.bucket = bucket
        self.key = key
        self.what = what
        self.fix = fix
        super().__init__(message)


class BucketUrlError(BucketError):
    """An s3:// location that is not one (`s3:/x`, an https:// URL, a bad bucket name)."""

    exit_code = 2
