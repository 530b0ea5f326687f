"""Errors whose message is written for the user of the pipeline."""


class SegmiaError(Exception):
    """A problem the user can fix. The message says what is wrong and how to fix it.

    The command line prints it as one paragraph, without a traceback.
    """


class ConfigError(SegmiaError):
    """The configuration is invalid (raised before any job is planned)."""


class DataError(SegmiaError):
    """An input file is missing, truncated, corrupt or inconsistent."""
