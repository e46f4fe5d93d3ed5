"""User errors: what the command line reports in one line, and what keeps its traceback.

A *user error* is a ``ValueError``, ``TypeError`` or ``FileNotFoundError`` that hf_collapse raised on
purpose after validating its input: either an instance of :class:`UserError` (the classes below), or
one raised by a ``raise`` statement in a module of this package (the ``neural_collapse`` evaluate
module it ships included, which evaluate runs from its own cache). Anything else (the same types raised
inside torch, transformers, json, ... or by a slip in our own code, such as ``None + 1``) is a bug or
an unexpected failure and keeps its traceback. ``hf-collapse --debug`` shows the traceback of user
errors too.
"""

from __future__ import annotations

import linecache
import os

USER_ERROR_TYPES = (ValueError, TypeError, FileNotFoundError)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # src/hf_collapse
_METRIC_MODULE = "evaluate_modules.metrics.neural_collapse."  # the shipped metric, as evaluate imports it


class UserError(Exception):
    """Marker base of errors caused by the caller's input (see the module docstring)."""


class UserValueError(UserError, ValueError):
    """A bad value from the caller (a ``ValueError``)."""


class UserTypeError(UserError, TypeError):
    """An argument of the wrong type (a ``TypeError``)."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the caller named that does not exist (a ``FileNotFoundError``)."""


def _raise_site(exc: BaseException):
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user error (one line on the command line) rather than a bug."""
    if isinstance(exc, UserError):
        return True
    if not isinstance(exc, USER_ERROR_TYPES):
        return False
    site = _raise_site(exc)
    if site is None:
        return False
    filename = os.path.abspath(site.tb_frame.f_code.co_filename)
    module = str(site.tb_frame.f_globals.get("__name__", ""))
    ours = os.path.commonpath([filename, _PACKAGE_DIR]) == _PACKAGE_DIR or module.startswith(
        ("hf_collapse.", _METRIC_MODULE)
    )
    if not ours:
        return False
    # a deliberate ``raise ...`` statement, not an implicit error of an expression on that line
    return linecache.getline(filename, site.tb_lineno).lstrip().startswith("raise ")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__
