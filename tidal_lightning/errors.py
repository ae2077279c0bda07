"""Errors a user can fix: the CLI prints them without a traceback and exits non-zero."""


class TidalError(Exception):
    """Base class of errors that come from the user's input, not from a bug."""


class ConfigError(TidalError):
    """The composed config holds a value the run cannot use."""


class DataNotFoundError(TidalError):
    """The dataset files are not on disk and could not be downloaded."""


class RunFolderError(TidalError):
    """The run folder already holds results that a new run would overwrite."""
