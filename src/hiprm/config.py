"""Load a stage's dataclass config from defaults < YAML file < `key=value` overrides.

`load_config(BuildConfig, "configs/x.yaml", ["neutral=drop", "split.seed=3"])` returns a
`BuildConfig`. Nested dataclasses are addressed with dotted keys. Values from the command line
are parsed as YAML scalars (`3` -> int, `true` -> bool, `[a, b]` -> list) and then checked
against the field's type. Unknown keys are errors that list the known ones; a typo never
silently falls back to a default.

Ranges are part of a field's type: `batch_size: Positive = 32`, `val_fraction: Annotated[float,
Range(0, 1, hi_open=True)]`, `device: Device`. They are checked when the config loads, so
`subsamples=0` or `device=tpu` is a one-line error before any work, not a traceback (or a
silently empty result) later. NaN is never a valid number. A YAML file must be UTF-8 with each
key once, and an override that is not valid YAML (`skip=[a`) is an error, not a string.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config dataclass."""


@dataclasses.dataclass(frozen=True)
class Range:
    """A number's allowed interval, attached with `Annotated[int, Range(1)]`."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value: float, key: str) -> None:
        low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if low or high:
            raise ConfigError(f"{key}: {value!r} is out of range; expected {self}")

    def __str__(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class Match:
    """A string's allowed form (a full-match regular expression), with words for the error."""

    pattern: str
    says: str

    def check(self, value: str, key: str) -> None:
        if not re.fullmatch(self.pattern, value):
            raise ConfigError(f"{key}: {value!r} is not {self.says}")

    def __str__(self) -> str:
        return self.says


# The common ranges, named once for every stage's config.
Positive = Annotated[int, Range(1)]  # counts and sizes
NonNegative = Annotated[int, Range(0)]  # where 0 means "all" / "off"
PositiveFloat = Annotated[float, Range(0, lo_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Probability = Annotated[float, Range(0, 1)]
Fraction = Annotated[float, Range(0, 1, hi_open=True)]  # a share that must leave something over
# The transformers schedulers that need no extra arguments (shared by rm train and selftrain).
Scheduler = typing.Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                           "constant_with_warmup", "inverse_sqrt"]  # fmt: skip
Device = Annotated[str, Match(r"auto|cpu|mps|(cuda|xpu|npu)(:\d+)?", "a device (auto, cpu, mps, cuda or cuda:N)")]


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`, converting where it is lossless (int -> float, etc.)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *rules = typing.get_args(tp)
        value = _coerce(value, base, key)
        if value is not None:
            for rule in rules:
                if isinstance(rule, Range | Match):
                    rule.check(value, key)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # `X | None`: X's own message (its range, its choices) says more
            raise ConfigError(errors[0])
        raise ConfigError(f"{key}: {value!r} does not fit {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        # PyYAML follows YAML 1.1, which reads "3e-4" (no dot) as a string.
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or math.isnan(number):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + u for u in unknown)} for {cls.__name__}; "
            f"known: {', '.join(prefix + k for k in types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def plain_list(raw: str) -> list[str] | None:
    """`[a, b]` of plain strings that YAML's flow syntax refuses (a `?` inside an item, as in a
    scorer spec `MODEL?format=tag`), as a list of strings; None for anything else.

    >>> plain_list("[runs/rm/model, ckpt?format=tag&step_tag=%20x]")
    ['runs/rm/model', 'ckpt?format=tag&step_tag=%20x']
    >>> plain_list("[a, [b]]") is None
    True
    """
    s = raw.strip()
    if len(s) < 2 or s[0] != "[" or s[-1] != "]" or any(c in s[1:-1] for c in "[]{}\"'"):
        return None
    return [x.strip() for x in s[1:-1].split(",") if x.strip()]


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            value = plain_list(raw)
            if value is None:
                # Falling back to the raw string read `skip=[a` as "[a": refuse instead.
                why = str(getattr(e, "problem", None) or e).splitlines()[0]
                raise ConfigError(f"{key}: {raw!r} is not a valid YAML value ({why}); quote it to mean a string") from None
        except ValueError as e:  # e.g. an integer of more digits than Python converts
            raise ConfigError(f"{key}: {str(e).split(':')[0]}") from None
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """A config from a plain dict (e.g. `to_dict` output shipped to a worker), checked like a file."""
    return _build(cls, values)


def check_config_fields(cfg: Any) -> None:
    """The checks `load_config` makes (types, ranges, choices), for a config built in code: a
    runner calls it first, so its own checks are only those across fields."""
    from_dict(type(cfg), to_dict(cfg))


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, or ConfigError naming the file (missing, not a regular
    file, not UTF-8, invalid YAML, a key given twice, not a mapping)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    if not p.is_file():  # a folder, or a named pipe that would block the read forever
        raise ConfigError(f"{p}: not a regular file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not valid UTF-8 (byte {e.start})") from None
    try:
        loaded = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {' '.join(str(e).split())}") from None
    except ValueError as e:
        raise ConfigError(f"{p}: {str(e).split(':')[0]}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return loaded


def build_config(cls: type[T], values: dict[str, Any], overrides: list[str] | None = None, where: str = "") -> T:
    """`cls` from `values` (a YAML mapping) < `key=value` overrides, checked; errors name `where`."""
    values = _merge(values, parse_overrides(overrides or []))
    try:
        return _build(cls, values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls` < YAML at `path` < `key=value` overrides; raises ConfigError on misfits."""
    values = read_yaml_config(path) if path is not None else {}
    return build_config(cls, values, overrides, str(path) if path else "")


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing `# ...` comments on the field lines of a dataclass's source (its help text)."""
    import inspect
    import io
    import tokenize

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending = None
    depth = 0
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and depth == 0 and pending is None:
            pending = tok.string
        elif tok.type == tokenize.COMMENT and pending and depth == 0:
            out.setdefault(pending, tok.string.lstrip("# ").strip())
        if tok.type in (tokenize.NEWLINE, tokenize.NL) and depth == 0:
            pending = None
    return out


def _doc_mentions(cls: type) -> dict[str, str]:
    """`key`: text  phrases of the class docstring, up to the next sentence end."""
    import re

    doc = " ".join((cls.__doc__ or "").split())
    out: dict[str, str] = {}
    for m in re.finditer(r"`([a-z_]+)`(?: \([^)]*\))?: (.+?)(?:\.(?= |$)|$)", doc):
        out.setdefault(m.group(1), m.group(2).strip())
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *rules = typing.get_args(tp)
        return " ".join([_type_name(base), *(str(r) for r in rules if isinstance(r, Range | Match))])
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def describe_config(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every field, nested sections flattened; the help is
    the field's trailing comment or its `key`: mention in the class docstring.

    >>> import dataclasses
    >>> C = dataclasses.make_dataclass("C", [("n", int, 3), ("mode", str, "a")])
    >>> C.__doc__ = "`n`: how many. `mode`: a or b."
    >>> describe_config(C)
    [('n', 'int', '3', 'how many'), ('mode', 'str', "'a'", 'a or b')]
    """
    types_ = _field_types(cls)
    comments: dict[str, str] = {}
    for base in reversed(cls.__mro__):  # inherited fields (e.g. ScorerSettings) keep their help
        if dataclasses.is_dataclass(base):
            comments.update({**_doc_mentions(base), **_field_comments(base)})
    rows = []
    for f in dataclasses.fields(cls):
        tp = types_[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe_config(tp, prefix + f.name + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((prefix + f.name, _type_name(tp), repr(default), comments.get(f.name, "")))
    return rows
