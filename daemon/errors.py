"""Errors raised at the daemon's edges."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


class UnsupportedOperation(RuntimeError):
    """A control op this daemon's mode refuses (a data-parallel rank's rollback, say):
    answered with the code `unsupported`."""


class StartupError(RuntimeError):
    """The daemon cannot start: a port in use, an unwritable state dir.

    `exit_code` is the distinct code the command line exits with.
    """

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code
