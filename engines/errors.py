"""Errors a user can act on: each names the model file and what is wrong."""


class ModelError(Exception):
    """The model cannot be used; the message names the file and the reason."""


class ModelLoadError(ModelError):
    """The file is missing, unreadable, or the runtime rejected it."""


class ModelLayoutError(ModelError):
    """The model loaded but its outputs are in no layout we can decode."""


class BackendUnavailable(Exception):
    """A runtime library this backend needs is not installed; reported, not fatal."""
