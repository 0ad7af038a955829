"""Errors that reach the user as one readable message, never as a traceback."""


class VaeLabError(Exception):
    """Base class: the message says what is wrong, the value given and what would be right."""


class ConfigError(VaeLabError):
    """A config value is out of range, of the wrong kind, or incompatible with another."""


class DataError(VaeLabError):
    """A data set is missing, truncated or unreadable."""


class RunFolderError(VaeLabError):
    """A run folder is missing the files a finished run writes."""
