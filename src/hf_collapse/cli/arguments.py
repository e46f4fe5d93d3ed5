"""Command-line flags generated from dataclass fields (help, default, choices, metavar from the field), so
that an option is declared once: ``MeasureOptions`` -> ``--k``, ``--tile-size``, ``--riesz-s``, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Optional


def _arg_type(tp) -> tuple[Any, Optional[str]]:
    """(element type, nargs) of a field annotation: ``Optional[X]`` -> X, ``list[X]`` -> (X, '+')."""
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], "+"
    return tp, None


def add_dataclass_arguments(parser, cls) -> None:
    """One ``--field-name`` flag per field of the dataclass ``cls`` (dest: the field name)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, nargs = _arg_type(hints[f.name])
        default = None if f.default is dataclasses.MISSING else f.default
        help_text = f.metadata.get("help", "") + ("" if default is None else f" (default: {default})")
        kwargs: dict[str, Any] = {"type": tp, "default": default, "help": help_text, "dest": f.name}
        if tp is bool:  # a switch: off unless given
            kwargs = {"action": "store_true", "help": f.metadata.get("help", ""), "dest": f.name}
        elif nargs:
            kwargs["nargs"] = nargs
        for key in ("choices", "metavar"):
            if key in f.metadata:
                kwargs[key] = f.metadata[key]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def dataclass_from_args(args: argparse.Namespace, cls):
    """The ``cls`` instance of the flags :func:`add_dataclass_arguments` added (validated by ``cls``)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
