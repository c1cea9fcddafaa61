"""The two ways a darknet file can be wrong. Both are ValueErrors with one-line messages that name
the file and, where there is one, the line, so the CLI can print them as they are."""

from __future__ import annotations


class CfgError(ValueError):
    """A .cfg file that cspnet cannot turn into a network (syntax, unknown option, bad shape)."""


class WeightsError(ValueError):
    """A .weights file that does not fit its network (header, too short, too long)."""


def read_bytes(path, what: str, error: type[ValueError]) -> bytes:
    """A file's bytes, or ``error`` saying in one line why there are none."""
    from pathlib import Path

    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise error(f"{p}: no such {what} file") from None
    except IsADirectoryError:
        raise error(f"{p}: is a directory, not a {what} file") from None
    except OSError as e:  # no permission, an I/O error, ...: still one line naming the file
        raise error(f"{p}: cannot read the {what} file: {e.strerror or type(e).__name__}") from None
