"""Stage settings as dataclasses: a field's default is the only place a default lives.

Each stage keeps its settings in one dataclass (tinypolicy.pipeline.settings,
tinypolicy.export.settings); everything else is derived from it here:

- `from_dict` builds a config from a dict (a presets table, `--set` overrides, a checkpoint's
  stored config, parsed flags), refusing unknown keys, values of the wrong type and values
  outside a field's choices or range with one line (`check_settings` does the same for a
  config built directly);
- `option` declares a field that is also a command-line flag, and `add_flags` adds those
  flags to a parser: name, parsing, choices, metavar, help and the default --help shows;
  `setting` declares the range of a field that is no flag;
- `refuse_other_settings` is the check every resumable stage runs before it continues a run.

ondevice/ keeps its own small argparse and `BCRecipe.from_dict`: a robot copies that folder
alone, without this module.
"""
from __future__ import annotations

import argparse
import dataclasses
import numbers
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.flags import layer_sizes, positive_float, positive_int

CLI = "tinypolicy.cli"  # the field metadata key `option` writes
CHECK = "tinypolicy.check"  # the field metadata key `setting` writes


def option(default: Any = dataclasses.MISSING, help: str | None = None, *, flag: str | None = None,
           metavar: str | None = None, choices: Iterable | None = None,
           parse: Callable[[str], Any] | None = None) -> Any:
    """A dataclass field that is also a command-line flag, `--field-name` unless `flag` names it.

    `parse` turns the flag's text into the value; by default the field's type decides: int a
    positive integer, float a positive finite number, tuple of ints "256,256", tuple of str one or more words,
    bool a switch. A field without a default is a required flag. `choices`, and the range
    `parse` accepts, are enforced for every way a config is built (`from_dict`,
    `check_settings`), not only on the command line."""
    spec = {"flag": flag, "help": help, "metavar": metavar, "choices": tuple(choices) if choices else None,
            "parse": parse}
    return dataclasses.field(default=default, metadata={CLI: spec})


def setting(default: Any, parse: Callable[[str], Any]) -> Any:
    """A dataclass field that is no command-line flag, whose values `parse` checks as it would
    check a flag's text (e.g. `float_in(0, 1, "(]")` for a discount factor)."""
    return dataclasses.field(default=default, metadata={CHECK: parse})


# ----------------------------------------------------------------------------- flag parsers

PARSERS: dict[type, Callable[[str], Any]] = {int: positive_int, float: positive_float, str: str, tuple: layer_sizes}
METAVARS = {int: "N", float: "X", tuple: "W,W"}


# ----------------------------------------------------------------------------- dict -> config

def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _optional_of(hint: Any) -> Any:
    """X for `X | None`, else the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table",
          Path: "a path"}


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _describe(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)}: {', '.join(_describe(a) for a in args)}"
        return f"a list, each {_describe(args[0])}" if args else "a list"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(hint: Any, value: Any) -> Any:
    """`value` as the annotation `hint` wants it (lists become tuples for tuple fields, ints
    floats for float fields); TypeError when it is of another type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value)
            except TypeError:
                pass
        raise TypeError
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise TypeError
            return tuple(_coerce(a, v) for a, v in zip(args, value))
        return origin(_coerce(args[0], v) for v in value) if args else origin(value)
    if hint is Any:
        return value
    if isinstance(value, bool) != (hint is bool):  # True is an int to Python, never to a config
        raise TypeError
    if hint is int and isinstance(value, numbers.Integral):
        return int(value)
    if hint is float and isinstance(value, numbers.Real):
        return float(value)
    if hint is Path and isinstance(value, (str, Path)):
        return Path(value)
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise TypeError


def _check_value(where: str, f: dataclasses.Field, hint: Any, value: Any) -> None:
    """Refuse a value outside the field's choices, or one its flag's parser (or its `setting`'s)
    would refuse: a preset's lr = nan is refused as `--lr nan` is."""
    spec = f.metadata.get(CLI, {})
    choices = spec.get("choices") or ()
    for item in value if isinstance(value, tuple) else (value,):
        if choices and item is not None and item not in choices:
            raise UserError(f"{where}: unknown {f.name.replace('_', ' ')} {item!r}; "
                            f"choose one of {', '.join(map(str, choices))}")
    if value is None or isinstance(value, bool):
        return
    parse = f.metadata.get(CHECK) or (_flag_parser(spec, hint) if spec else None)
    if parse is None:
        return
    try:
        parse(_shown(value))
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"{where}: {f.name}: {exc}") from None


def check_settings(config: Any, where: str) -> None:
    """Refuse, for a config built directly, a field value that `from_dict` would refuse: outside
    its choices or its range."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        _check_value(where, f, hints[f.name], getattr(config, f.name))


def from_dict(cls: type, values: dict[str, Any], where: str, *, fixed: dict[str, Any] | None = None) -> Any:
    """A `cls` from `values`, checked against its fields; `where` starts every error line.

    `fixed` holds values the caller sets itself (e.g. the env id of a compress run): they
    must not appear in `values`. Lists become tuples where a field is a tuple; unknown keys,
    missing required fields, wrong types and values outside a field's choices or range
    (`_check_value`) raise UserError."""
    fixed = fixed or {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    taken = sorted(set(values) & set(fixed))
    if taken:
        raise UserError(f"{where}: {', '.join(taken)} cannot be set here")
    known = sorted(set(fields) - set(fixed))
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                        f"(known: {', '.join(known) or 'none'})")
    given = {**values, **fixed}
    missing = [name for name, f in fields.items() if _required(f) and name not in given]
    if missing:
        raise UserError(f"{where}: {', '.join(missing)} must be given")
    hints = typing.get_type_hints(cls)
    checked = {}
    for name, value in given.items():
        try:
            checked[name] = _coerce(hints[name], value)
        except TypeError:
            raise UserError(f"{where}: {name} must be {_describe(hints[name])}, got {value!r}") from None
        _check_value(where, fields[name], hints[name], checked[name])
    return cls(**checked)


# ----------------------------------------------------------------------------- config -> flags

def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return (",".join if value and isinstance(value[0], int) else " ".join)(map(str, value))
    return str(value)


def _words(hint: Any) -> bool:
    """Whether a field of this (non-optional) type is a flag of one or more words."""
    return typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is str


def _flag_parser(spec: dict[str, Any], hint: Any) -> Callable[[str], Any]:
    """What turns an `option` field's flag text (one word, for a list of words) into its value."""
    hint = _optional_of(hint)
    return spec["parse"] or (str if _words(hint) else PARSERS[typing.get_origin(hint) or hint])


def add_flags(parser: argparse.ArgumentParser, cls: type, *, with_defaults: bool = True,
              exclude: tuple[str, ...] = ()) -> None:
    """One flag per `option` field of `cls` (in field order, but the fields named in `exclude`) on
    `parser` (or an argument group), its value stored under the field's name. Without defaults, an
    unset flag reads None, so whatever else supplies the setting (a preset) keeps its value."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(CLI)
        if spec is None or f.name in exclude:
            continue
        hint = _optional_of(hints[f.name])
        kind = typing.get_origin(hint) or hint
        word_list = _words(hint)
        required = with_defaults and _required(f)
        default = f.default if with_defaults and not required else None
        text = spec["help"] or ""
        if default is not None and default is not False:
            text += f"{' ' if text else ''}(default: {_shown(default)})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": text or None}
        if kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=_flag_parser(spec, hint), choices=spec["choices"],
                          metavar=spec["metavar"] or (None if spec["choices"] else METAVARS.get(kind)),
                          required=required, nargs="+" if word_list else None)
        parser.add_argument(spec["flag"] or "--" + f.name.replace("_", "-"), **kwargs)


def flag_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of `cls`'s flags in parsed `args`, leaving out unset ones (None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if CLI in f.metadata and getattr(args, f.name, None) is not None}


# ----------------------------------------------------------------------------- resuming

def setting_changes(saved: dict[str, Any], current: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Every setting that differs between `saved` and `current`, as "lr: 0.0003 -> 0.001",
    except those in `ignore`."""
    ignored = set(ignore)
    names = [*current, *(k for k in saved if k not in current)]
    return [f"{k}: {saved.get(k)} -> {current.get(k)}" for k in names
            if k not in ignored and saved.get(k) != current.get(k)]


def refuse_other_settings(saved: dict[str, Any], current: dict[str, Any], where: str | Path, *,
                          ignore: Iterable[str] = (), hint: str = "use another --out") -> None:
    """A stage resumes a run only with the settings it was started with: raise UserError
    naming every setting that differs (`setting_changes`), except those in `ignore`
    (settings a run may change when it resumes, e.g. its length)."""
    changed = setting_changes(saved, current, ignore)
    if changed:
        raise UserError(f"{where} holds a run with other settings ({', '.join(changed)}); {hint}")
