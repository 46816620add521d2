"""Reading EC2 Query parameters: flat ``Name.N.Sub`` keys into values, lists and filters.

EC2 serialises lists as ``KeyName.1``, ``KeyName.2`` ... and structures as
``IpPermissions.1.IpRanges.1.CidrIp``; the indexes need not be contiguous, only ordered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import Ec2Error, invalid, missing


class Params:
    """The request's parameters (query and form body), decoded, last value wins."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, default)

    def required(self, name: str) -> str:
        value = self.values.get(name)
        if value is None or value == "":
            raise missing(name)
        return value

    def bool(self, name: str, default: bool = False) -> bool:
        value = self.values.get(name)
        if value is None:
            return default
        if value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0"):
            return False
        raise invalid(name, value, "expected true or false")

    def int(self, name: str, default: int | None = None) -> int | None:
        value = self.values.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise invalid(name, value, "expected an integer") from None

    def sub(self, prefix: str) -> Params:
        """The parameters under ``prefix.`` with the prefix removed."""
        cut = len(prefix) + 1
        return Params({k[cut:]: v for k, v in self.values.items() if k.startswith(prefix + ".")})

    def indexes(self, prefix: str) -> list[int]:
        """The N of every ``prefix.N`` / ``prefix.N.*`` parameter, ascending."""
        pattern = re.compile(re.escape(prefix) + r"\.(\d+)(?:\.|$)")
        found = {int(m.group(1)) for k in self.values if (m := pattern.match(k))}
        return sorted(found)

    def items(self, prefix: str) -> list[Params]:
        """Structured list members ``prefix.N.*`` as Params each."""
        return [self.sub(f"{prefix}.{n}") for n in self.indexes(prefix)]

    def list(self, prefix: str) -> list[str]:
        """Scalar list members ``prefix.N``."""
        return [self.values[f"{prefix}.{n}"] for n in self.indexes(prefix) if f"{prefix}.{n}" in self.values]


@dataclass(frozen=True, slots=True)
class Filter:
    name: str
    values: tuple[str, ...]

    def matches(self, candidates) -> bool:
        """True if any candidate value matches any filter value (``*`` and ``?`` wildcards)."""
        if isinstance(candidates, str) or candidates is None:
            candidates = () if candidates is None else (candidates,)
        for cand in candidates:
            cand = str(cand)
            for pattern in self.values:
                if _wildcard_match(pattern, cand):
                    return True
        return False


def _wildcard_match(pattern: str, value: str) -> bool:
    # EC2 filter wildcards: * any run, ? one character, \ escapes them.
    regex = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            regex.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        regex.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
        i += 1
    return re.fullmatch("".join(regex), value, re.DOTALL) is not None


def filters(params: Params, allowed: set[str] | frozenset[str], *, tags: bool = True) -> list[Filter]:
    """``Filter.N.Name`` / ``Filter.N.Value.M``; a name outside ``allowed`` is an error.

    With ``tags``, ``tag:KEY``, ``tag-key`` and ``tag-value`` are accepted too.
    """
    out = []
    for item in params.items("Filter"):
        name = item.get("Name")
        if not name:
            raise missing("Filter.N.Name")
        ok = name in allowed or (tags and (name.startswith("tag:") or name in ("tag-key", "tag-value")))
        if not ok:
            raise Ec2Error("InvalidParameterValue", f"The filter '{name}' is invalid")
        values = tuple(item.list("Value"))
        if not values:
            raise Ec2Error("InvalidParameterValue", f"The filter '{name}' has no values")
        out.append(Filter(name, values))
    return out


def tag_filter_matches(flt: Filter, tags: dict[str, str]) -> bool | None:
    """The verdict of a tag filter on a resource's tags, or None if ``flt`` is no tag filter."""
    if flt.name.startswith("tag:"):
        key = flt.name[4:]
        return any(_wildcard_match(key, k) and flt.matches(v) for k, v in tags.items())
    if flt.name == "tag-key":
        return flt.matches(list(tags))
    if flt.name == "tag-value":
        return flt.matches(list(tags.values()))
    return None


__all__ = ["Filter", "Params", "filters", "tag_filter_matches"]
