"""The one exception type of the artifact package."""


class ArtifactError(ValueError):
    """A model file that cannot be read or written. The message names the file and the cause."""
