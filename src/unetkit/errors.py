"""Errors a user can act on.

Every entry point (CLI, HTTP, Python API) raises a subclass of `UnetkitError` for bad input; the
message names the file or field, what was wrong and what was expected. The CLI prints it as one
line and exits non-zero; the server maps it to a 4xx JSON body.
"""


class UnetkitError(Exception):
    """Base class of user-facing errors."""


class ConfigError(UnetkitError):
    """A config key is unknown, has the wrong type or an invalid value."""


class DataError(UnetkitError):
    """A data set or file cannot be used as it is."""


class ArtifactError(UnetkitError):
    """A model artifact is missing, corrupt, tampered with or incompatible."""


class InputError(UnetkitError):
    """An image given for prediction cannot be used (unreadable, wrong channels, too large, NaN)."""


class RegistryError(UnetkitError):
    """A model registry operation cannot be done (unknown version, refused promotion, bad location)."""


class StorageError(UnetkitError):
    """A file could not be written (disk full, file size limit, permission); the previous one is unchanged."""


class GateRefused(UnetkitError):
    """A quality gate measured the result and refused it: the input was fine, the model is not good
    enough (an int8 model losing accuracy, a registry version worse than production). The CLI exits
    with its own status for it (3), so scripts can tell it from a usage error (2)."""


class WorkersLost(UnetkitError):
    """A distributed run lost its workers more often than the retries allow: the inputs it names were
    not predicted (the others were, and a rerun of the same command skips them). The CLI exits
    with its own status for it (4): the inputs were fine, the cluster was not."""
