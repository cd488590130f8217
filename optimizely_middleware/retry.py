"""The import path ``optimizely_middleware.retry`` (named in the docs): the code is in
:mod:`optimizely_middleware.delivery.retry`.
"""

from optimizely_middleware.delivery.retry import (
    PermanentError,
    RetryPolicy,
    is_retryable_status,
    is_success_status,
    is_transient_error,
    parse_retry_after,
)

__all__ = [
    "PermanentError",
    "RetryPolicy",
    "is_retryable_status",
    "is_success_status",
    "is_transient_error",
    "parse_retry_after",
]
