"""Errors a user can act on: each message names the file, row, column or config key at fault."""


class CtxemoError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(CtxemoError, ValueError):
    """A config key is unknown, mistyped or outside its valid choices."""


class ManifestError(CtxemoError, ValueError):
    """A manifest file, row or column breaks the data contract."""


class AudioError(CtxemoError, ValueError):
    """An audio file is missing, unreadable, empty or holds invalid samples."""


class BundleError(CtxemoError, ValueError):
    """A model bundle is incomplete, from an incompatible version or unsafe to load."""
