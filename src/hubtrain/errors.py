"""Exceptions that carry a one-line, actionable message."""


class HubtrainError(Exception):
    """Base class for errors raised by hubtrain itself."""


class OfflineModelError(HubtrainError, OSError):
    """Weights were requested but are neither in the local Hugging Face cache nor reachable on the network."""
