"""Expected failures and the exit codes they map to (DESIGN.md §2).

Every error a user can cause or meet in normal operation is one of these; the CLI prints its message on one
line and exits with its code. Anything else is a bug and keeps its traceback, except a full disk (an OSError
of DISK_FULL_ERRNOS), which the CLI also prints on one line (disk_full_message).
"""

import errno

EXIT_OK = 0
EXIT_FAILED = 1  # a required step failed (metadata unreachable, verification failed, below --min-success)
EXIT_USAGE = 2  # usage or bad input (unknown name, bad config, malformed file)
EXIT_LOCKED = 75  # another run holds the lock (EX_TEMPFAIL: cron should simply try again later)


class MMCorpusError(Exception):
    """Base of all expected failures. `exit_code` is what the CLI exits with."""

    exit_code = EXIT_FAILED


class UsageError(MMCorpusError):
    """The user asked for something that cannot be (unknown name, bad option value)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A spec file is unreadable or malformed; the message names the file and key."""


class BadInputError(UsageError):
    """A dataset file is malformed; the message names the file and line/record."""


class DownloadError(MMCorpusError):
    """A file could not be fetched (after retries) or did not verify."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class VerificationError(DownloadError):
    """The bytes arrived but are not the file the spec describes (size, checksum, HTML page)."""


class LockedError(MMCorpusError):
    """Another run holds the lock on this root and dataset."""

    exit_code = EXIT_LOCKED


class DiskFullError(MMCorpusError):
    """A write failed for want of space, quota or file size; what is finished stays, a re-run goes on."""


# No space left (ENOSPC), over quota (EDQUOT), over the file size limit (EFBIG: `ulimit -f`, some file systems).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_message(exc: OSError, hint: str = "free space and re-run", where: str = "a file") -> str:
    """`disk full writing <path>: No space left on device; free space and re-run`; `where` stands in for the
    path when the error names none (write() raises ENOSPC without a file name)."""
    path = exc.filename if exc.filename is not None else where
    return f"disk full writing {path}: {exc.strerror or exc}; {hint}"
