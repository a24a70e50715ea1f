"""Typed errors. The CLI turns each into one line and an exit code; library code only raises."""

from __future__ import annotations

# Exit codes, documented in the README and in `--help`.
EXIT_OK = 0
EXIT_FAILURE = 1  # unexpected error (a bug, or an environment problem we did not foresee)
EXIT_USAGE = 2  # bad input: a flag, a file, a recipe
EXIT_DOES_NOT_FIT = 3  # nothing fits, or a recipe no longer fits
EXIT_FINGERPRINT = 4  # `check`: the recipe was made on different hardware or libraries
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a program its pipe's reader left


class AutotuneError(Exception):
    """Base class of errors the CLI reports as one clean line."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}; {self.hint}"


class UsageError(AutotuneError):
    """Bad input. `flag` names the option (or file) at fault."""

    exit_code = EXIT_USAGE

    def __init__(self, flag: str | None, message: str, hint: str | None = None):
        super().__init__(f"{flag}: {message}" if flag else message, hint)
        self.flag = flag


class DoesNotFitError(AutotuneError):
    """No configuration fits the budget (probe), or the recipe's configuration no longer fits (check)."""

    exit_code = EXIT_DOES_NOT_FIT


class FingerprintMismatch(AutotuneError):
    exit_code = EXIT_FINGERPRINT
