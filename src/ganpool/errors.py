"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class GanpoolError(Exception):
    """Something the person running ganpool can fix; the message says what and how."""


class ConfigError(GanpoolError):
    """A setting has a bad value."""


class DatasetMismatch(GanpoolError):
    """The local dataset is not the one the run was created with."""


class PayloadError(GanpoolError):
    """A tensor payload is malformed or does not match the model."""


class DatabaseUnavailable(GanpoolError):
    """The database cannot be reached (down, restarting, wrong address, refused login)."""


class LoginRefused(GanpoolError):
    """The server refused this login (wrong password, disabled or removed): retrying won't help."""


class OwnershipRefused(GanpoolError):
    """Another live session owns what this one wanted to own (a run's coordinator)."""
