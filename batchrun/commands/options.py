"""Command-line options declared once, for cli.py.

An options record is a frozen dataclass whose fields declare its command's argument and
options (`argument`, `option`, `Option.field`, `nested`): `declare(Record)` puts them on the
click command in field order (the order of --help), `build(Record, params)` makes the record
from what click parsed, and `command_line(record)` writes it back as arguments, for a command
line that repeats this one (`run`'s resume line). Options several commands declare alike are
`Option`s, used as a decorator (`@opt.strict`) or as a record's field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Record = TypeVar("Record", bound="DataclassInstance")
Command = TypeVar("Command", bound=Callable[..., Any])

_CLI = "cli"  # field metadata: the Argument or Option the field declares
_RESUME = "resume"  # field metadata: Resumed or NotResumed
_NESTED = "nested"  # field metadata: the record type whose fields this field's value holds


@dataclass(frozen=True)
class Resumed:
    """The option goes to a rerun's command line: in the line's `part` (options come by part,
    then in field order), as `--flag=VALUE` when `joined`, else as `--flag VALUE`."""

    part: int
    joined: bool = False


@dataclass(frozen=True)
class NotResumed:
    """The option stays out of a rerun's command line, for the reason given."""

    why: str


class Argument:
    """A positional argument of a record's command (click.argument's keywords)."""

    def __init__(self, **attrs: Any) -> None:
        self.attrs = attrs

    def declare(self, name: str) -> Callable[[Command], Command]:
        return click.argument(name, **self.attrs)

    def field(self) -> Any:
        return dataclasses.field(metadata={_CLI: self})


class Option:
    """A click option: its flags and click.option's keywords. `@option` puts it on a command
    (its parameter `name`, else click's choice); `option.field()` makes it a record's field,
    whose name is then the parameter's."""

    def __init__(self, *flags: str, name: str | None = None, **attrs: Any) -> None:
        self.flags, self.name, self.attrs = flags, name, attrs

    def __call__(self, command: Command) -> Command:
        return self.declare(self.name)(command)

    def declare(self, name: str | None) -> Callable[[Command], Command]:
        return click.option(*self.flags, *([name] if name else []), **self.attrs)

    def field(self, *, resume: Resumed | NotResumed | None = None) -> Any:
        """A record field of this option; its default is click's for the option."""
        return dataclasses.field(default=self.default(), metadata={_CLI: self, _RESUME: resume})

    def default(self) -> Any:
        """What click gives when the option is not given: False for a flag, () for a
        repeatable option, else None, unless the option says."""
        if "default" in self.attrs:
            return self.attrs["default"]
        if self.attrs.get("is_flag"):
            return False
        return () if self.attrs.get("multiple") else None

    def argv(self, value: Any, *, joined: bool) -> list[str]:
        """`value` as command-line words: the flag of a true flag, one pair per value of a
        repeatable option, else one pair."""
        flag = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        if self.attrs.get("is_flag"):
            return [flag] if value else []
        values = value if self.attrs.get("multiple") else (value,)
        if joined:
            return [f"{flag}={v}" for v in values]
        return [word for v in values for word in (flag, str(v))]


def argument(**attrs: Any) -> Any:
    """A record field declaring a positional argument."""
    return Argument(**attrs).field()


def option(*flags: str, resume: Resumed | NotResumed | None = None, **attrs: Any) -> Any:
    """A record field declaring an option used by one command only."""
    return Option(*flags, **attrs).field(resume=resume)


def nested(record: type[DataclassInstance]) -> Any:
    """A record field holding another record, whose options the command declares in place."""
    return dataclasses.field(default_factory=record, metadata={_NESTED: record})


def fields(record: type[DataclassInstance]) -> Iterator[dataclasses.Field[Any]]:
    """The fields that declare an argument or option, nested records' in place."""
    for f in dataclasses.fields(record):
        inner = f.metadata.get(_NESTED)
        if inner is not None:
            yield from fields(inner)
        else:
            yield f


def declaration(f: dataclasses.Field[Any]) -> Argument | Option:
    """The argument or option a record's field declares."""
    declared: Argument | Option = f.metadata[_CLI]
    return declared


def resume_rule(f: dataclasses.Field[Any]) -> Resumed | NotResumed | None:
    """Whether a rerun's command line repeats the field's option (None: not said)."""
    return f.metadata.get(_RESUME)


def declare(record: type[DataclassInstance]) -> Callable[[Command], Command]:
    """Put a record's argument and options on a click command, in field order."""

    def decorate(command: Command) -> Command:
        for f in reversed(list(fields(record))):
            declared = declaration(f)
            if isinstance(declared, Option) and declared.name not in (None, f.name):
                # One name for one option: what the command functions get is the field.
                raise TypeError(f"{record.__name__}.{f.name} declares {declared.name}")
            command = declared.declare(f.name)(command)
        return command

    return decorate


def build(record: type[Record], params: Mapping[str, Any]) -> Record:
    """The record of what click parsed (`params`: one value per declared parameter)."""
    values = {}
    for f in dataclasses.fields(record):
        inner = f.metadata.get(_NESTED)
        values[f.name] = build(inner, params) if inner is not None else params[f.name]
    return record(**values)


def command_line(record: DataclassInstance) -> list[str]:
    """The record as command-line words: its arguments, then each option it repeats
    (`Resumed`) that differs from its default, by part, then in field order."""
    words: list[str] = []
    options: list[tuple[int, int, list[str]]] = []
    for index, (f, value) in enumerate(_values(record)):
        declared, rule = declaration(f), resume_rule(f)
        if isinstance(declared, Argument):
            words.append(str(value))
        elif isinstance(rule, Resumed) and value != f.default:
            options.append((rule.part, index, declared.argv(value, joined=rule.joined)))
    return words + [word for *_, argv in sorted(options) for word in argv]


def _values(record: DataclassInstance) -> Iterator[tuple[dataclasses.Field[Any], Any]]:
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.metadata.get(_NESTED) is not None:
            yield from _values(value)
        else:
            yield f, value


strict = Option("--strict", is_flag=True, help="A model without a local input schema is an error.")
schemas = Option(
    "--schemas",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Model schema folder searched first [default: $BATCHRUN_SCHEMA_DIR], then "
    "schemas/models/ beside the manifest, then the packaged schemas.",
)
api_base = Option(
    "--api-base",
    name="api_base_option",
    help="API base URL [default: $RUNCOMFY_MODEL_API_BASE or RunComfy].",
)


def output(flag: str, help: str) -> Option:
    """A FILE option of `compare` (parameter `<name>_file`); - is stdout."""
    return Option(
        flag,
        name=flag.lstrip("-") + "_file",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help=f"{help} - is stdout.",
    )
