"""Typed errors. The CLI turns each into one line on stderr and exit code 1."""


class SamError(Exception):
    """Base class of every error sam raises on purpose."""


class InvalidInputError(SamError, ValueError):
    """A prompt, target or option that cannot be used (empty, too long, wrong shape)."""


class UnknownEditError(SamError, KeyError):
    """An edit id that is not in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown edit"


class StoreMismatchError(SamError):
    """A store (database, memory, permutation) that belongs to another model, layer or permutation."""


class CorruptStoreError(SamError):
    """A tensor file or database that cannot be read back."""


class ModelNotFoundError(SamError):
    """The model path or the default model's package is missing."""


class StoreLockedError(SamError):
    """Another sam process holds the store's writer lock."""


class EditFailedError(SamError):
    """An edit that could not be made (training diverged, or it did not take): nothing was written."""
