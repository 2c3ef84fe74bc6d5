"""Telling a broken checkpoint from storage that did not answer, and asking again.

A step is broken when storage answered and what it holds is wrong: a file missing from a committed step, metadata
that does not parse, an array file cut short. A step whose files could not be read because the storage failed to
answer (a 503 or 429 that outlived the client's own retries, a dropped connection, a timeout, a refused permission)
is not: its files may be perfectly good, so it is read again a few times and, if the storage still fails, the run
stops saying so and moves nothing (jaxnets.errors.StorageUnavailableError).

Cloud clients (gcsfs, tensorstore, google-cloud-storage) already retry each request; these retries are around a
whole read (a step's metadata, its arrays), for failures longer than theirs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from jaxnets.errors import StorageUnavailableError

log = logging.getLogger("jaxnets")

T = TypeVar("T")

# Seconds before each further try: a read is tried len(RETRY_DELAYS) + 1 times, over ~15 s at most.
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
# Status words in the messages of tensorstore (through orbax) and HTTP codes in those of the HTTP clients, for an
# answer that may differ when asked again.
_TRANSIENT_WORDS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "Too Many Requests",
                    "Service Unavailable", "Connection reset", "Connection refused", "timed out")
_TRANSIENT_CODES = {408, 429, 500, 502, 503, 504}
# Exception classes of the storage clients (named, not imported: present only with cloud storage) whose errors are
# failures to answer: aiohttp and requests (gcsfs, google-cloud-storage), google-api-core, and TensorFlow's GCS
# client (epath's for gs:// when TensorFlow is installed and no emulator is set).
_TRANSIENT_CLASSES = {"ClientError", "ClientOSError", "ServerDisconnectedError", "ClientConnectionError",
                      "ClientPayloadError", "TransportError", "RetryError", "ChunkedEncodingError",
                      "ServiceUnavailable", "TooManyRequests", "InternalServerError", "GatewayTimeout",
                      "UnavailableError", "DeadlineExceededError", "ResourceExhaustedError", "AbortedError",
                      "PermissionDeniedError"}


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_not_found(error: BaseException) -> bool:
    """Storage answered that the file is not there (FileNotFoundError, or TensorFlow's NotFoundError for gs://)."""
    return isinstance(error, FileNotFoundError) or type(error).__name__ == "NotFoundError"


def is_storage_failure(error: BaseException) -> bool:
    """True when the storage failed to answer (worth asking again), False when it answered with something wrong."""
    for e in _chain(error):
        if is_not_found(e):
            return False
        if isinstance(e, (ConnectionError, TimeoutError, PermissionError)):
            return True
        if isinstance(e, OSError) and not isinstance(e, (IsADirectoryError, NotADirectoryError)) and e.errno is None:
            return True  # an OSError made by a storage client (gcsfs), not by the local file system's answer
        if type(e).__name__ in _TRANSIENT_CLASSES or getattr(e, "code", None) in _TRANSIENT_CODES:
            return True
        if any(word in str(e) for word in _TRANSIENT_WORDS):
            return True
    return False


def read_with_retries(read: Callable[[], T], what: str) -> T:
    """`read()`, tried again after each storage failure (see `is_storage_failure`); any other error is raised as
    it is, for the caller to judge the step broken. After the last try, StorageUnavailableError names `what`."""
    for attempt, delay in enumerate((*RETRY_DELAYS, None)):
        try:
            return read()
        except Exception as e:
            if not is_storage_failure(e):
                raise
            if delay is None:
                reason = " ".join(str(e).split())[:300]
                raise StorageUnavailableError(
                    f"could not read {what} after {attempt + 1} tries ({type(e).__name__}: {reason}); "
                    "the storage failed to answer, so nothing was moved or changed: run the same command again once "
                    "it answers") from e
            log.warning("checkpoint: reading %s failed (%s: %s); trying again in %.0f s", what, type(e).__name__,
                        " ".join(str(e).split())[:200], delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
