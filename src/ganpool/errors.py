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


class AlreadyExists(GanpoolError):
    """A run or a student of that name is recorded already."""


class LoginExists(GanpoolError):
    """A login role of that name exists on the server already (another class's, perhaps)."""


class NotFound(GanpoolError):
    """There is no student, viewer or run of that name."""


class NotAllowed(GanpoolError):
    """This login lacks the rights the operation needs (the database refused it)."""


class LockHeld(GanpoolError):
    """A row another session holds locked: the transaction gave way rather than wait for it
    (nothing was committed; the caller tries again later)."""


class NotificationFailed(GanpoolError):
    """A NOTIFY could not be sent. Notifications are hints: listeners poll as well."""


def explain(error: BaseException) -> tuple[str, int]:
    """The one line and the exit status the CLI gives for an error: what went wrong and, where
    the person can act, what to do. Every command's errors pass through here."""
    import psycopg  # here, not at import time: `ganpool --help` stays quick

    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(error, GanpoolError):
        return f"error: {first}", 2
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return f"refused by the database: {first}", 2
    if isinstance(error, psycopg.Error):
        return f"database error: {first} (run with -v for details)", 3
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"error: {where}{error.strerror}", 2
    if isinstance(error, MemoryError):
        return "error: out of memory (try a smaller --n, unit_size or model)", 2
    return (
        f"internal error: {type(error).__name__}: {first} (a bug in ganpool: run again with -v "
        "for the traceback, and report it)",
        1,
    )
