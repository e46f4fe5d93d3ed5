"""User errors: what the command line reports in one line, and what keeps its traceback.

Every validation in hf_collapse raises one of the classes below. They subclass ``ValueError``,
``TypeError`` and ``FileNotFoundError``, so callers catch them as usual; the CLI prints an instance of
:class:`UserError` as one line and lets anything else (the same built-in types raised inside torch,
transformers, json, ... or a slip in our own code) keep its traceback. ``hf-collapse --debug`` shows
the traceback of user errors too.
"""

from __future__ import annotations


class UserError(Exception):
    """Marker base of errors caused by the caller's input (see the module docstring)."""


class UserValueError(UserError, ValueError):
    """A bad value from the caller (a ``ValueError``)."""


class UserTypeError(UserError, TypeError):
    """An argument of the wrong type (a ``TypeError``)."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the caller named that does not exist (a ``FileNotFoundError``)."""


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user error (one line on the command line) rather than a bug: its type says so."""
    return isinstance(exc, UserError)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__
