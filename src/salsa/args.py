"""Typed dataclass configs turned into command-line parsers.

Every stage declares a dataclass whose fields carry their help text in
``field(metadata={"help": ...})``; ``parse(ConfigClass, argv)`` builds the
argparse parser from it, so the Snakemake rules, a hand-run stage and
``accelerate launch`` all share one definition of the stage's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def arg(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text; no default means a required flag."""
    if default is dataclasses.MISSING:  # None keeps dataclass inheritance legal
        return dataclasses.field(default=None, metadata={"help": help, "required": True, **kwargs})
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: list(value) if isinstance(value, list) else dict(value),
                                 metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _none_or(convert):
    def parse(text: str):
        return None if text.strip().lower() in {"none", "null", ""} else convert(text)
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def build_parser(config_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description or (config_cls.__doc__ or "").strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        tp, optional = _strip_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": f.name}
        if f.metadata.get("required"):
            kwargs["required"] = True
        elif f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        else:
            kwargs["default"] = f.default_factory()
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        origin = typing.get_origin(tp)
        if origin in (list, tuple):
            (item,) = typing.get_args(tp)[:1]
            kwargs["nargs"] = "*"
            kwargs["type"] = _parse_bool if item is bool else item
        elif tp is bool:
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "BOOL"
        else:
            kwargs["type"] = _none_or(tp) if optional else tp
        parser.add_argument(flag, **kwargs)
    return parser


def parse(config_cls: type[T], argv: list[str] | None = None) -> T:
    """Parse ``argv`` into an instance of ``config_cls`` (a dataclass)."""
    namespace = build_parser(config_cls).parse_args(argv)
    config = config_cls(**vars(namespace))
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as err:
            raise SystemExit(f"error: {config_cls.__name__}: {err}") from None
    return config
