"""Effective-dated, versioned methodology parameters, loaded from YAML data files.

A methodology file (bundled ones live in `gateway/accounting/methodology/<name>.yaml`) holds every
value a regulator sets or that the reference marks unconfirmed (default carbon content, oxidation
rate, grid factor, reference O2, HJ 75 validity thresholds, substitution tiers), each as a list of
versions with the dates they are in force, a status and a source:

    methodology: cn-mee-2022
    description: ...
    sources: [...]
    parameters:
      cc_coal_tc_per_gj:
        - {value: 0.03356, effective_from: 2019-01-01, effective_to: 2022-06-07,
           status: secondary, source: ...}
        - {value: 0.03085, effective_from: 2022-06-08, effective_to: null, status: confirmed, ...}

Both ends of a range are inclusive plant-local dates; `effective_to: null` is open-ended. A file is
validated once and completely (unknown keys, overlapping or unordered ranges, mixed value kinds are
refused, naming the file and the field), so a correction to a value is a data change that shows in
the methodology's digest: SHA-256 of the canonical JSON of the validated document (keys sorted, no
whitespace, UTF-8, dates as YYYY-MM-DD), independent of the file's comments and layout.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from importlib import resources
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError, GatewayError

__all__ = [
    "BUNDLED_PACKAGE",
    "Methodology",
    "MethodologyDocument",
    "MethodologyError",
    "MethodologyFile",
    "MethodologyFileError",
    "NoValueInForceError",
    "ParameterValue",
    "ParameterVersion",
    "UnknownParameterError",
    "bundled_methodologies",
    "load_methodology",
    "parse_methodology",
    "read_methodology",
    "read_methodology_file",
]

BUNDLED_PACKAGE = "gateway.accounting"
_BUNDLED_FOLDER = "methodology"
_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
_PARAMETER_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"

Number = StrictInt | StrictFloat
ParameterValue = int | float | tuple[int | float, ...]
"""A parameter's value: a number, or a list of numbers (e.g. lookback tiers) as a tuple."""


class MethodologyError(GatewayError):
    """A methodology that cannot be loaded, or a parameter it cannot give."""


class MethodologyFileError(MethodologyError, ConfigError):
    """A methodology file that must not be used: names the file and the field."""


class UnknownParameterError(MethodologyError, KeyError):
    """The methodology has no parameter of that name."""

    def __str__(self) -> str:
        return str(self.args[0])


class NoValueInForceError(MethodologyError, ValueError):
    """The parameter exists, but none of its versions is in force on the date asked for."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ParameterVersion(_Strict):
    """One value of a parameter and the dates (both inclusive) it is in force."""

    value: Number | tuple[Number, ...]
    effective_from: date
    effective_to: date | None = Field(description="last day in force; null while it still is")
    status: Literal["confirmed", "secondary", "unconfirmed"]
    source: str = Field(min_length=1, description="where the value (and its dates) come from")

    @field_validator("value", mode="before")
    @classmethod
    def _number_or_numbers(cls, value: object) -> object:
        # one clear message instead of pydantic's one-per-union-member
        def is_number(item: object) -> bool:
            return isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item)

        if is_number(value):
            return value
        if isinstance(value, list | tuple) and value and all(is_number(item) for item in value):
            return tuple(value)
        raise ValueError(f"must be a finite number or a non-empty list of them, got {value!r}")

    @model_validator(mode="after")
    def _range_not_reversed(self) -> ParameterVersion:
        if self.effective_to is not None and self.effective_to < self.effective_from:
            raise ValueError(f"effective_to {self.effective_to} is before "
                             f"effective_from {self.effective_from}")
        return self

    def in_force(self, on: date) -> bool:
        """True when `on` lies within effective_from..effective_to (inclusive)."""
        return self.effective_from <= on and (self.effective_to is None or on <= self.effective_to)


ParameterName = Annotated[str, Field(pattern=_PARAMETER_PATTERN)]


class MethodologyDocument(_Strict):
    """A whole methodology file, as validated."""

    methodology: str = Field(pattern=_NAME_PATTERN)
    description: str = Field(min_length=1)
    sources: tuple[str, ...] = Field(min_length=1)
    parameters: dict[ParameterName, tuple[ParameterVersion, ...]] = Field(min_length=1)


def _span(version: ParameterVersion) -> str:
    return f"{version.effective_from}..{version.effective_to or 'open'}"


def _check_versions(name: str, versions: tuple[ParameterVersion, ...]) -> str | None:
    """What is wrong with one parameter's list of versions, or None."""
    if not versions:
        return "no versions"
    if len({isinstance(version.value, tuple) for version in versions}) > 1:
        return "its versions mix a number and a list"
    for earlier, later in pairwise(versions):
        if later.effective_from <= earlier.effective_from:
            return "versions must be listed oldest first (by effective_from)"
        if earlier.effective_to is None or later.effective_from <= earlier.effective_to:
            return (f"overlapping effective ranges: {_span(earlier)} and {_span(later)} are both in "
                    f"force on {later.effective_from}")
    return None


@dataclass(frozen=True, kw_only=True)
class Methodology:
    """A validated methodology: its parameters by name, where it came from, and its digest."""

    name: str
    description: str
    sources: tuple[str, ...]
    parameters: Mapping[str, tuple[ParameterVersion, ...]]
    source: str
    digest: str

    def __repr__(self) -> str:
        return f"Methodology(name={self.name!r}, digest={self.digest[:16]}..., source={self.source!r})"

    def version(self, name: str, on: date) -> ParameterVersion:
        """The version of parameter `name` in force on the plant-local day `on`, with its status and
        source (for provenance). UnknownParameterError or NoValueInForceError otherwise."""
        if isinstance(on, datetime):
            raise TypeError(f"{name}: pass the plant-local day as a datetime.date, not a datetime ({on!r})")
        try:
            versions = self.parameters[name]
        except KeyError:
            raise UnknownParameterError(
                f"methodology {self.name} has no parameter {name!r} ({self.source})") from None
        for version in versions:
            if version.in_force(on):
                return version
        ranges = ", ".join(_span(version) for version in versions)
        raise NoValueInForceError(
            f"methodology {self.name}: parameter {name} has no value in force on {on.isoformat()} "
            f"(in force: {ranges})")

    def value(self, name: str, on: date) -> ParameterValue:
        """The value of parameter `name` in force on the plant-local day `on`."""
        return self.version(name, on).value

    def number(self, name: str, on: date) -> float:
        """A numeric parameter in force on `on`, as a float (TypeError if it is a list)."""
        value = self.value(name, on)
        if isinstance(value, tuple):
            raise TypeError(f"methodology {self.name}: parameter {name} is a list, not a number")
        return float(value)

    def integer(self, name: str, on: date) -> int:
        """A whole-number parameter in force on `on` (TypeError if it is not one)."""
        value = self.value(name, on)
        if not isinstance(value, int):
            raise TypeError(f"methodology {self.name}: parameter {name} is {value!r}, not a whole number")
        return value

    def integers(self, name: str, on: date) -> tuple[int, ...]:
        """A list-of-whole-numbers parameter in force on `on` (TypeError if it is not one)."""
        value = self.value(name, on)
        if not isinstance(value, tuple) or not all(isinstance(item, int) for item in value):
            raise TypeError(f"methodology {self.name}: parameter {name} is {value!r}, "
                            "not a list of whole numbers")
        return tuple(int(item) for item in value)


@dataclass(frozen=True, slots=True)
class MethodologyFile:
    """A methodology file as shipped: its name, its exact bytes, and the digest reports cite for
    it (of the validated document, not of the bytes). What the verifier API serves and an
    evidence bundle carries."""

    name: str
    data: bytes
    digest: str


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an error in a mapping's key rather than its value
            path += " (the name)"
        else:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _canonical_json(document: MethodologyDocument) -> bytes:
    return json.dumps(document.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


def parse_methodology(text: str, *, source: str, expected_name: str | None = None) -> Methodology:
    """Validate the text of a methodology file; MethodologyFileError names `source` and the field.

    `expected_name`, when given, must equal the file's `methodology` (a file is named after it).
    """
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MethodologyFileError(source, "", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise MethodologyFileError(source, "", "expected a mapping at the top level")
    try:
        document = MethodologyDocument.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = ("unknown key (check its spelling and where it sits)"
                   if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, "))
        raise MethodologyFileError(source, _field_path(first["loc"]), message) from exc
    for name, versions in document.parameters.items():
        problem = _check_versions(name, versions)
        if problem is not None:
            raise MethodologyFileError(source, f"parameters.{name}", problem)
    if expected_name is not None and document.methodology != expected_name:
        raise MethodologyFileError(source, "methodology",
                                   f"{document.methodology!r} does not match the file's name "
                                   f"{expected_name!r}")
    return Methodology(
        name=document.methodology,
        description=document.description,
        sources=document.sources,
        parameters=MappingProxyType(dict(document.parameters)),
        source=source,
        digest=hashlib.sha256(_canonical_json(document)).hexdigest(),
    )


def bundled_methodologies() -> tuple[str, ...]:
    """Names of the methodologies bundled with Stackline, sorted."""
    folder = resources.files(BUNDLED_PACKAGE).joinpath(_BUNDLED_FOLDER)
    return tuple(sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir()
                        if entry.name.endswith(".yaml")))


def load_methodology(name_or_path: str | Path) -> Methodology:
    """Load a bundled methodology by name (`cn-mee-2022`) or a methodology file by path.

    A string without a path separator or a .yaml/.yml suffix is a name. The file's `methodology`
    must match its file name (without the suffix), so a copy edited into a new methodology gets a new
    name as well as a new digest.
    """
    return read_methodology(name_or_path)[1]


def read_methodology(name_or_path: str | Path) -> tuple[bytes, Methodology]:
    """The bytes of a methodology file (bundled, by name; or by path, as `load_methodology` takes
    it) and the methodology they hold: what an evidence bundle carries, so that a verifier can
    check the digest a report cites and recompute with the very same file."""
    if isinstance(name_or_path, str) and not re.search(r"[/\\]|\.ya?ml$", name_or_path):
        name = name_or_path
        if not re.match(_NAME_PATTERN, name):
            raise MethodologyError(f"{name!r} is not a methodology name (bundled: "
                                   f"{', '.join(bundled_methodologies())})")
        resource = resources.files(BUNDLED_PACKAGE).joinpath(_BUNDLED_FOLDER, f"{name}.yaml")
        if not resource.is_file():
            raise MethodologyError(f"no bundled methodology {name!r} (bundled: "
                                   f"{', '.join(bundled_methodologies())})")
        data = resource.read_bytes()
        return data, parse_methodology(data.decode("utf-8"), source=str(resource),
                                       expected_name=name)
    path = Path(name_or_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MethodologyFileError(str(path), "", f"cannot read the file: {exc.strerror}") from exc
    return data, parse_methodology(data.decode("utf-8"), source=str(path),
                                   expected_name=path.name.rsplit(".", 1)[0])


def read_methodology_file(name_or_path: str | Path) -> MethodologyFile:
    """`read_methodology` as a `MethodologyFile`: the bytes, and the digest of exactly those."""
    data, methodology = read_methodology(name_or_path)
    return MethodologyFile(methodology.name, data, methodology.digest)
