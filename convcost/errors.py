"""Exit statuses and the exceptions the CLI maps onto them (one place, as httpie does)."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitStatus(IntEnum):
    """Process exit codes of the ``convcost`` command."""

    OK = 0
    BUDGET_EXCEEDED = 1  # a limit in a budget file was exceeded
    BAD_INPUT = 2  # bad usage, bad spec or budget file
    MODEL_ERROR = 3  # the model could not be loaded, built or traced
    INCOMPLETE = 4  # some rows failed; the finished ones were kept and reported
    INTERNAL = 70  # a bug in convcost (EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl-C; finished rows were kept and reported
    BROKEN_PIPE = 141  # the reader of standard output went away (128 + SIGPIPE), quietly
    TERMINATED = 143  # SIGTERM (CI cancellation, timeouts); finished rows were kept


class ConvcostError(Exception):
    """Base of every error convcost reports as one line, with an exit status."""

    exit_status: ExitStatus = ExitStatus.INTERNAL


class InputError(ConvcostError):
    """Bad usage or a bad input file (exit 2)."""

    exit_status = ExitStatus.BAD_INPUT


class SpecError(InputError):
    """A YAML layer spec that does not validate.

    The message names the file, line, layer (index and name), key, value and what is allowed.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        layer: str | None = None,
        key: str | None = None,
    ) -> None:
        self.file, self.line, self.layer, self.key = file, line, layer, key
        self.detail = message
        where = file or "<spec>"
        if line is not None:
            where += f":{line}"
        parts = [where]
        if layer:
            parts.append(layer)
        if key:
            parts.append(f"key '{key}'")
        super().__init__(": ".join([*parts, message]))


class BudgetFileError(InputError):
    """A budget file that does not validate (exit 2)."""


class ModelError(ConvcostError):
    """A model that cannot be loaded, built or traced (exit 3)."""

    exit_status = ExitStatus.MODEL_ERROR


class ResourceError(InputError):
    """A run refused up front because it would not fit (memory guard); exit 2."""


def first_line(e: BaseException, limit: int | None = None, *, with_type: bool = True) -> str:
    """An exception as one line: ``Type: the first line of its message`` (``Type`` alone when
    the message is empty; without ``with_type``, the message's first line), cut at ``limit``."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    if with_type:
        out = f"{type(e).__name__}: {text}" if text else type(e).__name__
    else:
        out = text or type(e).__name__
    return out[:limit] if limit else out


def kwargs_text(kwargs: dict[str, Any]) -> str:
    """Keyword arguments as a call writes them: ``aux_logits=False, image_size=384``."""
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
