"""Errors the CLI turns into one line and exit code 2 (bad input, not a bug), and how to describe any error."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a config value, a missing file, an unreachable server.

    The message is one sentence naming the problem and the fix; the CLI prints
    it without a traceback and exits 2.
    """


class ConfigError(UserError):
    pass


class BadValue(ConfigError):
    """One key's value is invalid; the message starts with where the value came from (a file, --set...)."""


class CheckpointError(UserError):
    pass


class NoCheckpoint(CheckpointError):
    """Nothing saved there yet (as opposed to a checkpoint that is damaged or refused)."""


class ReportedOnRank0(UserError):
    """Under torchrun, bad input rank 0 found and reported: the other ranks exit 2 without saying it again."""


class RunFolderBusy(UserError):
    """Another process holds the run folder's lock."""


def describe(e: BaseException, limit: int = 300) -> str:
    """One line for a log or a message: the first non-empty line of ``e``, credentials removed.

    Exception texts may quote a URI with a password in it, and may be empty:
    fall back to the exception's type name.
    """
    from .redact import redact_text

    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    text = redact_text(lines[0])[:limit] if lines else ""
    return text or type(e).__name__
