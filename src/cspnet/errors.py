"""How cspnet reports a problem: one line, naming what is wrong.

The library names its own arguments (``label_smoothing=1.5 must lie in [0, 1)``); the command line
shows the same error under its flags (``--label-smoothing 1.5 must lie in [0, 1)``). An
:class:`OptionError` carries its message as a template over the arguments it mentions, so each
side renders the names its user typed.
"""

from __future__ import annotations

from collections.abc import Callable

NAME_ONLY = object()  # an argument mentioned by name, without a value ("lower {lr}")


def first_line(e: BaseException | str, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none), or of
    a text, cut to ``limit`` characters: what a one-line error shows of a library's long message."""
    lines = [s for s in str(e).strip().splitlines() if s.strip()]
    text = lines[0].strip() if lines else type(e).__name__
    return text if limit is None else text[:limit]


def printable(text) -> str:
    """A path (or any text) as it can be shown: bytes that are not UTF-8 (legal in Linux file names,
    carried by Python as lone surrogates) written as ``\\xff`` escapes, so printing it, plotting it
    or putting it in a message cannot fail."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class OptionError(ValueError):
    """A bad value of a named argument, or advice that names arguments.

    ``template`` refers to arguments as ``{name}`` fields; ``values`` gives each one's value, or
    :data:`NAME_ONLY` where the message only names it. ``str()`` is the library's form
    (``name=value``, values as ``repr``); :meth:`render` lets the CLI name its flags instead.

    Example:
        >>> e = OptionError("{label_smoothing} must lie in [0, 1)", label_smoothing=1.5)
        >>> str(e)
        'label_smoothing=1.5 must lie in [0, 1)'
        >>> e.render(lambda name, value, shown: f"--{name.replace('_', '-')} {shown}".rstrip())
        '--label-smoothing 1.5 must lie in [0, 1)'
    """

    def __init__(self, template: str, **values):
        self.template, self.values = template, values
        super().__init__(self.render(_library_form))

    def render(self, show: Callable[[str, object, str], str]) -> str:
        """The message with each argument shown as ``show(name, value, shown_value)``
        (``shown_value`` is "" for a name alone)."""
        return self.template.format(**{k: show(k, v, _shown(v)) for k, v in self.values.items()})


def _shown(value) -> str:
    if value is NAME_ONLY:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _library_form(name: str, value, shown: str) -> str:
    return name if value is NAME_ONLY else f"{name}={value!r}"
