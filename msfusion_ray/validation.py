"""Strict validation of what users write, by pydantic v2 models derived from the frozen dataclasses that declare it.

Configs, device profiles, fleets and every plug-in's parameters are declared as frozen dataclasses whose fields
may carry a check (`checked(1.0, check=positive)`, declared here). `model_of(cls)` derives a pydantic model
from such a dataclass: the same fields, types and defaults, strict (unknown fields, wrong types, NaN and
infinities are rejected; the only conversion is int to float), each check a validator. `build` validates a mapping
with it and returns the dataclass; the first problem becomes one `UserInputError` line naming the dotted field.
The same models give the JSON Schema editors read (`msfusion-ray schema`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Annotated, Callable, Literal, Mapping, TypeVar, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticCustomError

from msfusion_ray.errors import UserInputError

T = TypeVar("T")

Check = Callable[[Any], "str | None"]


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0 (got {value})"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0 (got {value})"


def fraction(value: Any) -> str | None:
    """A share of something: 0 < value <= 1."""
    return None if 0 < value <= 1 else f"must be in (0, 1] (got {value})"


def probability(value: Any) -> str | None:
    return None if 0 <= value <= 1 else f"must be in [0, 1] (got {value})"


# What each check means in JSON Schema terms, for editors (the check itself still runs on validation).
positive.json_schema = {"exclusiveMinimum": 0}
non_negative.json_schema = {"minimum": 0}
fraction.json_schema = {"exclusiveMinimum": 0, "maximum": 1}
probability.json_schema = {"minimum": 0, "maximum": 1}


def checked(default: Any = dataclasses.MISSING, check: Check | None = None, **kwargs: Any) -> Any:
    """A dataclass field whose value must pass `check` (a function returning an error text or None)."""
    if isinstance(default, (dict, list)):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"check": check}, **kwargs)


STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, protected_namespaces=(),
                    arbitrary_types_allowed=False)
_MODELS: dict[type, type[BaseModel]] = {}


def model_of(cls: type) -> type[BaseModel]:
    """The strict pydantic model of dataclass `cls` (cached)."""
    if cls not in _MODELS:
        _MODELS[cls] = create_model(cls.__name__, __config__=STRICT, __doc__=cls.__doc__, **_fields_of(cls))
        _MODELS[cls].__dataclass__ = cls
    return _MODELS[cls]


def _fields_of(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for field in dataclasses.fields(cls):
        if not field.init or field.metadata.get("internal"):  # internal: set by the code, never written by users
            continue
        annotation = annotation_of(hints[field.name])
        check = field.metadata.get("check")
        if check is not None:
            annotation = Annotated[annotation, AfterValidator(_validator(check)),
                                   Field(json_schema_extra=getattr(check, "json_schema", None))]
        if field.default is not dataclasses.MISSING:
            fields[field.name] = (annotation, Field(default=field.default))
        elif field.default_factory is not dataclasses.MISSING:
            fields[field.name] = (annotation, Field(default_factory=field.default_factory))
        else:
            fields[field.name] = (annotation, ...)
    return fields


def _validator(check: Callable[[Any], str | None]) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        problem = check(value) if value is not None else None
        if problem:
            raise PydanticCustomError("check", "{problem}", {"problem": problem})
        return value

    return run


def _as_tuple(value: Any) -> Any:
    """YAML has lists, not tuples: a list stands for a tuple (its items are still checked strictly)."""
    return tuple(value) if isinstance(value, list) else value


def annotation_of(hint: Any) -> Any:
    """The pydantic annotation of a dataclass field's type: nested dataclasses become their models."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return model_of(hint)
    if origin is Annotated:
        return Annotated[(annotation_of(args[0]), *hint.__metadata__)]
    if origin in (Union, types.UnionType):
        return Union[tuple(annotation_of(a) for a in args)]
    if origin is list:
        return list[annotation_of(args[0])] if args else list
    if origin is tuple:
        inner = tuple[tuple(annotation_of(a) if a is not Ellipsis else a for a in args)] if args else tuple
        return Annotated[inner, BeforeValidator(_as_tuple)]
    if origin is dict:
        return dict[annotation_of(args[0]), annotation_of(args[1])] if args else dict
    return hint


def to_dataclass(value: Any) -> Any:
    """A validated model back as its dataclass (recursively); plain values as they are."""
    if isinstance(value, BaseModel):
        convert = getattr(type(value), "__convert__", None)
        if convert is not None:
            return convert(value)
        cls = type(value).__dataclass__
        return cls(**{name: to_dataclass(getattr(value, name)) for name in type(value).model_fields})
    if isinstance(value, list):
        return [to_dataclass(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_dataclass(v) for v in value)
    if isinstance(value, dict):
        return {k: to_dataclass(v) for k, v in value.items()}
    return value


def validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    """`data` validated by `model`, or the first problem as a one-line `UserInputError` (`where` prefixes the
    dotted field: a file name, or the section the data came from)."""
    if not isinstance(data, Mapping):
        raise UserInputError(where, f"must be a mapping, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise first_problem(err, model, where) from None


def build(cls: type[T], data: Any, where: str) -> T:
    """Dataclass `cls` from a mapping, rejecting unknown fields, wrong types, NaN and failed checks."""
    return to_dataclass(validate(model_of(cls), data, where))


# --- one line from a pydantic error -------------------------------------------------------------------------------

def first_problem(err: ValidationError, model: type[BaseModel], where: str) -> UserInputError:
    """The first error as `UserInputError(dotted field, message)`; where the value failed every member of a union,
    the members' messages are joined with "or"."""
    errors = err.errors(include_url=False)
    located = [(_locate(e["loc"], model), e) for e in errors]
    (path, known, _), first = located[0]
    messages = []
    for (other, other_known, _), error in located:
        if other == path:
            text = _message(error, other_known)
            if text not in messages:
                messages.append(text)
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        path = [*path, "name"]
    dotted = _join(path)
    return UserInputError(f"{where}.{dotted}" if where and dotted else where or dotted, " or ".join(messages))


def _join(parts: list[str]) -> str:
    text = ""
    for part in parts:
        text += part if part.startswith("[") or not text else f".{part}"
    return text


def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _members(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _label(annotation: Any) -> str:
    """How pydantic names a union member in an error's location."""
    annotation = _strip(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _tag_of(member: Any) -> Any:
    member = _strip(member)
    if isinstance(member, type) and issubclass(member, BaseModel) and "name" in member.model_fields:
        literal = member.model_fields["name"].annotation
        if typing.get_origin(literal) is Literal:
            return typing.get_args(literal)[0]
    return None


def _locate(loc: tuple, model: type[BaseModel]) -> tuple[list[str], list[str], Any]:
    """The user's dotted path of an error location (union member labels dropped), the fields known where it
    points, and the annotation there."""
    node: Any = model
    parts: list[str] = []
    known: list[str] = []
    for item in loc:
        node = _strip(node)
        members = _members(node) if node is not None else []
        if len(members) > 1:  # pydantic names the member it tried: not a part of the user's path
            node = next((m for m in members if _tag_of(m) == item or _label(m) == item), None)
            continue
        node = members[0] if members else None
        node = _strip(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            known = list(node.model_fields)
            parts.append(str(item))
            field = node.model_fields.get(str(item))
            node = field.annotation if field is not None else None
            if field is not None and field.metadata:
                node = Annotated[(node, *field.metadata)]
        elif typing.get_origin(node) is dict:
            parts.append(str(item))
            node = typing.get_args(node)[1] if typing.get_args(node) else None
        elif typing.get_origin(node) in (list, tuple) and isinstance(item, int):
            parts.append(f"[{item}]")
            args = [a for a in typing.get_args(node) if a is not Ellipsis]
            node = args[min(item, len(args) - 1)] if args else None
        else:
            parts.append(f"[{item}]" if isinstance(item, int) else str(item))
            node = None
    return parts, known, node


def _message(error: Mapping[str, Any], known: list[str]) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown field (known: {', '.join(sorted(known))})" if known else "unknown field (none are known here)"
    if kind in ("missing", "union_tag_not_found"):
        return "required field is missing"
    if kind == "check":
        return str(ctx.get("problem", error["msg"]))
    if kind == "union_tag_invalid":
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"unknown {ctx.get('kind', 'strategy')} '{ctx.get('tag')}' (known: {expected})"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of {expected} (got {value!r})"
    if kind == "finite_number":
        return f"must be finite (got {value!r})"
    texts = {"int": "must be an integer", "float": "must be a number", "bool": "must be true or false",
             "string": "must be a string"}
    for prefix, text in texts.items():
        if kind.startswith(prefix):
            return f"{text} (got {value!r})"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type", "mapping_type"):
        return f"must be a mapping (got {type(value).__name__})"
    if kind in ("list_type", "tuple_type", "iterable_type"):
        return f"must be a list (got {type(value).__name__})"
    return str(error["msg"])
