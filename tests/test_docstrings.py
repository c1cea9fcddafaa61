"""The examples in cspnet's docstrings run and print what they show (``doctest``)."""

import doctest
import importlib
import pkgutil

import pytest

import cspnet

MODULES = sorted(m.name for m in pkgutil.walk_packages(cspnet.__path__, "cspnet.") if not m.name.endswith("__main__"))


def _with_examples():
    for name in MODULES:
        module = importlib.import_module(name)
        if any(t.examples for t in doctest.DocTestFinder().find(module)):
            yield name


@pytest.mark.parametrize("name", list(_with_examples()))
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_the_examples_are_found():
    assert {"cspnet.csp", "cspnet.errors", "cspnet.inference.fuse"} <= set(_with_examples())
