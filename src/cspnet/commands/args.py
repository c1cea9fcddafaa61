"""argparse types that reject bad values with one clear line, and the flag a library argument has."""

from __future__ import annotations

import argparse


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    return _whole(text, 0)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


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
