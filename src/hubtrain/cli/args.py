"""What every ``hubtrain`` command shares: one-line parse errors and flag types checked at parse time.

A bad flag is refused before anything is built or written: ``hubtrain quickstart --image-size 0`` ends with
``hubtrain quickstart: error: argument --image-size: '0' is not a positive integer; see hubtrain quickstart --help``
and exit status 2, and leaves no run folder behind.
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """``argparse`` with errors on one line (no usage block): what went wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def _number(text: str, kind: type, test, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0 and v != float("inf"), "a positive number")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def probability(text: str) -> float:
    return _number(text, float, lambda v: 0 < v <= 1, "a probability in (0, 1]")


__all__ = ["Parser", "non_negative_float", "non_negative_int", "positive_float", "positive_int", "probability"]
