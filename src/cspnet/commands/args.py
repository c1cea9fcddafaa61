"""argparse types that reject bad values with one clear line, and the flag a library argument has."""

from __future__ import annotations

import argparse
import math

from ..models.spec import IMG_SIZE_WHY, MAX_IMG_SIZE, MIN_IMG_SIZE

MAX_COUNT = 1_000_000  # the upper bound of a count (epochs, rounds, ...) that has no better one


def _whole(text: str, minimum: int, maximum: int = MAX_COUNT) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not minimum <= value <= maximum:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum} and at most {maximum}")
    return value


def whole(minimum: int, maximum: int = MAX_COUNT, why: str = ""):
    """An argparse type: a whole number in [minimum, maximum] (``why`` explains the bound)."""

    def parse(text: str) -> int:
        try:
            return _whole(text, minimum, maximum)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{e}{why}") from None

    parse.__name__ = f"whole number in [{minimum}, {maximum}]"
    return parse


def positive_int(text: str) -> int:
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    return _whole(text, 0)


def number(low: float, high: float, low_open: bool = False, high_open: bool = False, why: str = ""):
    """An argparse type: a finite number in the interval from ``low`` to ``high`` (open at an end
    where asked); infinities and NaN are refused with the interval, so an absurd value is one line
    here rather than a NaN loss or an overflow deep in torch."""
    high_open = high_open or math.isinf(high)
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not (inside and math.isfinite(value)):  # NaN fails every comparison
            raise argparse.ArgumentTypeError(f"{text!r} must lie in {interval}{why}")
        return value

    parse.__name__ = f"number in {interval}"
    return parse


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


PROBABILITY = number(0.0, 1.0, why=": a probability")


IMG_SIZE_HELP = f"{MIN_IMG_SIZE} to {MAX_IMG_SIZE} px, the rule of every command; detectors: a multiple of their stride"


def img_size(text: str) -> int:
    """``--img-size`` of every command: one rule (:data:`cspnet.models.spec.MIN_IMG_SIZE` and
    ``MAX_IMG_SIZE``), so a size one command trains at is one every other command accepts."""
    return whole(MIN_IMG_SIZE, MAX_IMG_SIZE, f" ({IMG_SIZE_WHY})")(text)


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """argparse prints a long usage block before its error; say what is wrong in one line instead."""

    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    parser.error = error


# library argument -> flag, where the flag is not the argument's name with dashes
FLAGS = {"progress": "--quiet", "model_args": "--set"}


def flag_for(name: str) -> str:
    """The command line's flag for a library argument (``label_smoothing`` -> ``--label-smoothing``)."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))
