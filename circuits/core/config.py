"""One vocabulary for configs and results: dataclasses that validate themselves and convert
to and from plain JSON data.

Configs (in the style of sae-lens): choice fields are typed ``Literal[...]`` (or a tuple of
them) and `Config.__post_init__` checks every such field, then calls `validate()` for the
other checks, so an invalid config cannot exist. Errors are one-line `CircuitsError`s.
``to_dict()`` / ``from_dict(data, where=...)`` are the only serialisation code; the command
line takes its defaults and choices from the dataclasses (`add_flag`, over `field_default` and
`field_choices`) and from functions (`param_default`), so no default is written twice. A
function may be named as ``"module:function"``: its default is then read from the source, so
``circuits CMD --help`` shows it without importing the module (and torch).

Results (`Result`) are plain dataclasses with ``to_dict()``: what a library function
returns, read by attribute, and turned into JSON only at the edge (the CLI, the report).

    @dataclass
    class TrainConfig(Config):
        label: ClassVar[str] = "train config"
        arch: Literal["topk", "relu"] = "topk"
        width: int = 64

        def validate(self) -> None:
            if self.width <= 0:
                raise CircuitsError(f"train config: width must be positive, got {self.width}")

    TrainConfig(arch="gelu")   # CircuitsError: unknown train config arch 'gelu': use topk, relu
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from circuits.core.errors import CircuitsError

if TYPE_CHECKING:
    import argparse
    import ast

C = TypeVar("C", bound="Config")


# ------------------------------------------------------------------------------ type hints
@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _allows_none(hint: Any) -> bool:
    return hint is type(None) or (_is_union(hint) and type(None) in get_args(hint))


def literal_choices(hint: Any) -> tuple | None:
    """The allowed values of a ``Literal[...]`` hint (also ``Literal[...] | None``), else None."""
    if get_origin(hint) is Literal:
        return get_args(hint)
    if _is_union(hint):
        for arg in get_args(hint):
            if (choices := literal_choices(arg)) is not None:
                return choices
    return None


def _element_choices(hint: Any) -> tuple | None:
    """The allowed elements of ``tuple[Literal[...], ...]`` / ``list[Literal[...]]`` (or | None)."""
    if _is_union(hint):
        for arg in get_args(hint):
            if (choices := _element_choices(arg)) is not None:
                return choices
        return None
    if get_origin(hint) in (tuple, list) and get_args(hint):
        return literal_choices(get_args(hint)[0])
    return None


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a hint names (``X`` or ``X | None``), else None."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if _is_union(hint):
        for arg in get_args(hint):
            if (found := _dataclass_in(arg)) is not None:
                return found
    return None


def _strip_none(hint: Any) -> Any:
    if _is_union(hint):
        rest = [a for a in get_args(hint) if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def _field(cls: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


# ------------------------------------------------------------------------------ plain data
def to_plain(value: Any) -> Any:
    """``value`` as JSON-shaped data: dataclasses -> dicts (field order), tuples -> lists;
    dict keys and other values are kept as they are."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, (Result, Config)) and type(value).to_dict not in (Result.to_dict, Config.to_dict):
            return value.to_dict()  # a result or config that chose its own JSON
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _from_plain(hint: Any, value: Any, where: str) -> Any:
    """JSON data -> what ``hint`` names: nested dataclasses, lists, tuples (``tuple[X, ...]``
    or fixed ``tuple[X, Y]``) and dicts of them. A value of the wrong JSON type for a
    ``bool`` / ``int`` / ``float`` / ``str`` hint is a one-line `CircuitsError` naming
    ``where`` (an integer is a number; ``true`` is not)."""
    if value is None:
        return None
    hint = _strip_none(hint)
    cls = _dataclass_in(hint)
    if cls is not None:
        return _build(cls, value, where)
    origin, args = get_origin(hint), get_args(hint)
    if origin in (list, tuple) and args:
        if not isinstance(value, (list, tuple)):
            raise CircuitsError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):  # fixed length
            if len(value) != len(args):
                raise CircuitsError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_from_plain(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        items = [_from_plain(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict and args:
        if not isinstance(value, dict):
            raise CircuitsError(f"{where}: expected an object, got {value!r}")
        return {k: _from_plain(args[1], v, f"{where}[{k!r}]") for k, v in value.items()}
    if hint in _SCALARS:
        if hint in (bool, str):
            ok = isinstance(value, hint)
        else:  # bool is an int subclass, but not a number here
            ok = isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
        if not ok:
            raise CircuitsError(f"{where}: expected {_SCALARS[hint]}, got {value!r}")
        return float(value) if hint is float else value
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if issubclass(cls, Config):
        return cls.from_dict(data, where=where)
    if not isinstance(data, dict):
        raise CircuitsError(f"{where} is not an object")
    try:
        return cls(**data)
    except TypeError as err:
        raise CircuitsError(f"{where}: {err}") from None


def _prefixed(where: str | None, message: str) -> str:
    return f"{where}: {message}" if where else message


# ------------------------------------------------------------------------------ configs
class Config:
    """Base for config dataclasses (decorate the subclass with ``@dataclass``).

    ``__post_init__`` turns lists given for tuple fields into tuples, checks every
    ``Literal``-typed field (and every element of a tuple / list of ``Literal``), then calls
    `validate()`. Subclasses set ``label`` (how messages name the config) and may set
    ``field_labels`` (how a choice error names a field, e.g. ``{"arch": "SAE architecture"}``).
    """

    label: ClassVar[str] = "config"
    field_labels: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            hint, value = hints[f.name], getattr(self, f.name)
            if isinstance(value, list) and get_origin(_strip_none(hint)) is tuple:
                object.__setattr__(self, f.name, value := tuple(value))
            choices = literal_choices(hint)
            if choices is not None:
                if not (value is None and _allows_none(hint)) and value not in choices:
                    raise CircuitsError(self.choice_error(f.name, value, choices))
                continue
            choices = _element_choices(hint)
            if choices is not None and value is not None:
                for item in value:
                    if item not in choices:
                        raise CircuitsError(self.choice_error(f.name, item, choices))
        self.validate()

    def validate(self) -> None:
        """Checks other than the ``Literal`` fields; raise a one-line `CircuitsError`."""

    def choice_error(self, name: str, value: Any, allowed: tuple) -> str:
        """The one line for a value outside a ``Literal`` field's choices."""
        what = self.field_labels.get(name) or f"{self.label} {name}"
        return f"unknown {what} {value!r}: use {', '.join(str(a) for a in allowed)}"

    def to_dict(self) -> dict:
        """JSON-shaped: nested dataclasses as dicts (by their own ``to_dict`` where they have
        one), tuples as lists."""
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Any, where: str | None = None) -> C:
        """The config ``data`` describes (e.g. read from JSON). An unknown or missing field, or
        an invalid value, is a one-line `CircuitsError` prefixed by ``where`` (the file, ...)."""
        if not isinstance(data, dict):
            raise CircuitsError(_prefixed(where, f"expected an object ({cls.label})"))
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise CircuitsError(_prefixed(where, f"unknown {cls.label} field {unknown[0]!r}{more}"))
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.init and f.name not in data:
                raise CircuitsError(_prefixed(where, f"missing field {f.name!r}"))
        hints = _hints(cls)
        inner = where or cls.label
        values = {k: _from_plain(hints[k], v, f"{inner}: {k}") for k, v in data.items()}
        try:
            return cls(**values)
        except CircuitsError as err:
            raise CircuitsError(_prefixed(where, str(err))) from None


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` (calling its default factory)."""
    f = _field(cls, name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


def field_choices(cls: type, name: str) -> tuple:
    """The allowed values of a ``Literal`` field (or the allowed elements of a tuple of them)."""
    hint = _hints(cls)[name]
    choices = literal_choices(hint)
    if choices is None:
        choices = _element_choices(hint)
    if choices is None:
        raise KeyError(f"{cls.__name__}.{name} is not a Literal field")
    return choices


def param_default(fn: Callable | str, name: str) -> Any:
    """The default of parameter ``name`` of function ``fn``. ``fn`` may be a name,
    ``"package.module:function"``: its default, a literal, is then read from the module's source
    without importing the module."""
    if isinstance(fn, str):
        import ast

        node = _source_defaults(fn).get(name)
        if node is None:
            raise KeyError(f"{fn}({name}) has no default")
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise KeyError(f"{fn}({name}): the default is not a literal") from None
    default = inspect.signature(fn).parameters[name].default
    if default is inspect.Parameter.empty:
        raise KeyError(f"{fn.__name__}({name}) has no default")
    return default


@cache
def _source_defaults(target: str) -> dict[str, ast.expr]:
    """Parameter name -> default expression of the module-level function ``"module:function"``."""
    import ast
    import importlib.util

    module, _, name = target.partition(":")
    spec = importlib.util.find_spec(module)  # imports the parent packages, not the module
    if spec is None or not spec.origin:
        raise KeyError(f"no module {module}")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), spec.origin)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            a = node.args
            positional = [*a.posonlyargs, *a.args]
            with_defaults = positional[len(positional) - len(a.defaults) :]
            defaults = {p.arg: d for p, d in zip(with_defaults, a.defaults, strict=True)}
            defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None})
            return defaults
    raise KeyError(f"{module} has no function {name}")


# ------------------------------------------------------------------------------ command-line flags
def with_default(text: str, value: Any) -> str:
    """Help text ending in the default the library uses (a tuple comma-joined)."""
    if isinstance(value, (tuple, list)):
        value = ",".join(str(v) for v in value)
    return f"{text} (default {value})"


def add_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    source: type | Callable | str,
    help: str,
    name: str | None = None,
    given: bool = False,
    **kwargs: Any,
) -> argparse.Action:
    """Add ``flag`` for field ``name`` of the dataclass ``source`` (or parameter ``name`` of the
    function ``source``, see `param_default`); ``name`` defaults to the flag's, dashes as
    underscores. The flag takes the default (a tuple as comma-joined text) and its type (int,
    float, else text); the help ends in ``(default X)``, with ``{choices}`` replaced by a
    ``Literal`` field's choices. The choices are not given to argparse: the config checks them,
    with its own one-line error. ``given=True``: the value is None unless the flag is given
    (for settings that only apply with another flag); the help still names the default.
    Other keywords go to ``add_argument``."""
    name = name or flag.lstrip("-").replace("-", "_")
    if isinstance(source, type):
        default, hint = field_default(source, name), _strip_none(_hints(source)[name])
        if "{choices}" in help:
            help = help.replace("{choices}", ", ".join(map(str, field_choices(source, name))))
    else:
        default = param_default(source, name)
        hint = type(default)
    kind = hint if hint in (int, float) else None
    if isinstance(default, (tuple, list)):
        default = ",".join(str(v) for v in default)
    shown = with_default(help, default)
    if kind is not None:
        kwargs.setdefault("type", kind)
    return parser.add_argument(flag, default=None if given else default, help=shown, **kwargs)


# ------------------------------------------------------------------------------ results
class Result:
    """Base for result dataclasses: read by attribute; ``to_dict()`` gives the JSON shape
    (nested dataclasses as dicts, tuples as lists). Override ``to_dict`` for fields that are
    not JSON data."""

    def to_dict(self) -> dict:
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
