"""Errors that the command line turns into one line on stderr and an exit status."""


class BasinlabError(Exception):
    """Bad input from the user: exit status 2, one line, no traceback (unless --debug)."""

    exit_code = 2


class ConfigError(BasinlabError):
    """An option, config file, model config or regime that is not allowed."""


class DataError(BasinlabError):
    """A dataset folder that is missing, incomplete or corrupt."""


class CheckpointError(BasinlabError):
    """A checkpoint that cannot be read safely."""


class WriteError(BasinlabError):
    """A file could not be written (disk full, read-only, quota): exit status 4. The previous version of
    the file is intact and no temporary file is left; the run resumes once the cause is gone."""

    exit_code = 4


class NonFiniteLossError(Exception):
    """Training produced NaN/inf loss: exit status 3, the last good checkpoint is kept."""

    exit_code = 3


class WorkerLostError(Exception):
    """A real parameter server lost a worker process under --on-worker-loss stop, or every worker: exit status 5;
    the last checkpoint is kept."""

    exit_code = 5
