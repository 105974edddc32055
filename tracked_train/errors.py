"""Errors the CLI turns into one line and exit code 2 (bad input, not a bug)."""


class UserError(Exception):
    """Bad input: a config value, a missing file, an unreachable server.

    The message is one sentence naming the problem and the fix; the CLI prints
    it without a traceback and exits 2.
    """


class ConfigError(UserError):
    pass


class CheckpointError(UserError):
    pass
