"""Exceptions that carry a one-line, actionable message."""


class HubtrainError(Exception):
    """Base class for errors raised by hubtrain itself."""


class OfflineModelError(HubtrainError, OSError):
    """Weights were requested but are neither in the local Hugging Face cache nor reachable on the network."""


def one_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``, at most 400 characters: how hubtrain reports a wrapped error."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:400]
