"""The error tree. Library errors are converted at the boundary with ``raise ... from``."""


class QcnodeError(Exception):
    """Base class of every error qcnode raises on purpose."""


class ConfigError(QcnodeError):
    """A setting or configuration file is missing or invalid."""


class DecodeError(QcnodeError):
    """A file or dataset cannot be read or its pixels cannot be decoded."""


class UnsupportedInput(QcnodeError):
    """Readable input that qcnode does not handle (wrong SOP class, absurd size, ...)."""


class ModelError(QcnodeError):
    """Model weights are missing, mismatched or unusable. Never fall back to random weights."""


class UnknownModel(ModelError):
    """A model name the registry does not know (a typo, or a bare architecture name such as
    ``qcnet_d10_w3``): the caller's mistake, so commands that skip an unloadable model
    (eval, bench) fail on it instead."""


class StorageError(QcnodeError):
    """The node cannot keep what it received (disk full, fsync failed, database down)."""


class DeliveryError(QcnodeError):
    """A result could not be sent to a destination."""
