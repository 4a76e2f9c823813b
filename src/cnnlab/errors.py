"""Errors for user mistakes. The CLI prints their message on one line, with no traceback."""


class CnnlabError(Exception):
    """Base class: a mistake in what the user asked for, with a message that names the fix."""


class ShapeError(CnnlabError, ValueError):
    """A tensor or layer does not fit: wrong rank, channel count or spatial size."""


class SpecError(CnnlabError, ValueError):
    """A network description in the chapter's notation cannot be parsed or built."""


class SizeError(CnnlabError, ValueError):
    """A network or input above the size limits (CNNLAB_MAX_PARAMS, CNNLAB_MAX_ACTIVATION_BYTES)."""


class OptionError(CnnlabError, ValueError):
    """An unknown choice for an option, such as a kernel name or a ReLU backward rule."""


class DataError(CnnlabError):
    """A data set is missing, corrupt or has the wrong format."""


class ModelError(CnnlabError, KeyError):
    """An unknown model name, or weights that do not fit a model."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class RegistryError(ModelError, ValueError):
    """A model registered under a name that is taken, or with a builder create() cannot check."""


class ConfigError(CnnlabError, ValueError):
    """A training setting that is unknown, out of range or in conflict with another."""


class StorageError(CnnlabError, OSError):
    """A file or folder cannot be written or read: a full disk, a read-only folder, no
    permission. An ``OSError`` too, with the system's ``errno`` and ``strerror``."""

    def __init__(self, message: str, errno: int | None = None, strerror: str | None = None
                 ) -> None:
        super().__init__(errno, strerror)
        self.message = message

    def __str__(self) -> str:
        return self.message
