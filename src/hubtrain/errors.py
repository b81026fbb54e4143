"""Exceptions that carry a one-line, actionable message."""


class HubtrainError(Exception):
    """Base class for errors raised by hubtrain itself."""


class RunInterrupted(HubtrainError):
    """Training stopped before it finished (SIGTERM, Ctrl+C): the message says where the last good checkpoint is."""

    def __init__(self, message: str, checkpoint: str | None = None, exit_code: int = 143) -> None:
        super().__init__(message)
        self.checkpoint, self.exit_code = checkpoint, exit_code


class OfflineModelError(HubtrainError, OSError):
    """Weights were requested but are neither in the local Hugging Face cache nor reachable on the network."""


def one_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``, at most 400 characters: how hubtrain reports a wrapped error."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:400]
