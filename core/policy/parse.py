"""KILLSWITCH.md → ``Policy``: the Markdown split into its ``## SECTION`` blocks, each block read by a YAML
library (safe loading, no anchors or aliases, bounded), every key checked and kept with its line.

The published template is not one YAML document (its title and quote are not YAML, its ``---`` rules
would start new documents): each section is read alone, its heading and the ``---`` rules left as
blank lines so that YAML's line numbers are the file's.  Unknown keys and sections are warnings; wrong
types and impossible values are errors that name the line and the key.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from ..errors import ConfigError
from .model import SECTIONS, Audit, Escalation, Forbidden, Override, Policy, Problem, Triggers
from .schema import BUILDERS, KNOWN_KEYS, Checker

__all__ = ["KNOWN_KEYS", "MAX_BYTES", "ParseResult", "PolicyError", "load_policy", "parse_file", "parse_text"]

MAX_BYTES = 1 << 20  # a policy file over 1 MiB is refused
_MAX_EVENTS = 20_000  # YAML events per section
_MAX_DEPTH = 16
_SEQ, _MAP = "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"


class PolicyError(ConfigError):
    """A KILLSWITCH.md that cannot be read or is invalid; ``problems`` has every finding (``str`` of
    each is ``FILE:LINE: error: KEY: message``)."""

    def __init__(self, message: str, problems: tuple[Problem, ...] = ()) -> None:
        super().__init__(message, detail=[str(p) for p in problems])
        self.problems = problems


@dataclass(frozen=True)
class ParseResult:
    policy: Policy | None  # None when there is an error
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")


class _Reject(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


# -- the Markdown around the blocks -------------------------------------------------------------------

_HEADING = re.compile(r"^##[ \t]+([A-Za-z][A-Za-z0-9 _-]*?)[ \t]*#*[ \t]*$")
_RULE = re.compile(r"^(?:---+|\*\*\*+|___+)[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(?:```|~~~)")
_BARE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*[ \t]*:")


@dataclass
class _Block:
    name: str
    heading_line: int  # 1-based
    lines: list[tuple[int, str]]  # (0-based index, text) of the YAML body


def _split(text: str, c: Checker) -> tuple[str, str, list[_Block]]:
    title, quote = "", []
    blocks: list[_Block] = []
    current: _Block | None = None
    for index, line in enumerate(text.split("\n")):
        heading = _HEADING.match(line)
        if heading:
            current = _Block(heading.group(1).strip().upper().replace(" ", "_"), index + 1, [])
            blocks.append(current)
            continue
        if _RULE.match(line) or _FENCE.match(line):
            continue  # a section separator or a code fence around the YAML: not YAML itself
        if current is not None:
            current.lines.append((index, line))
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("# ") and not title:
            title = stripped[2:].strip()
        elif stripped.startswith(">"):
            quote.append(stripped[1:].strip())
        elif _BARE_KEY.match(line):
            c.error(
                stripped.split(":")[0], "a key before the first '## SECTION' heading belongs to no section", index + 1
            )
    return title, " ".join(q for q in quote if q), blocks


# -- YAML ---------------------------------------------------------------------------------------------


def _yaml(block: _Block, c: Checker) -> Any:
    """The block's YAML as plain values (dicts, lists, scalars), with every key's line in ``c.lines``."""
    if not block.lines:
        return None
    first = block.lines[0][0]
    body = "\n" * first + "\n".join(text for _, text in block.lines) + "\n"
    try:
        events = 0
        for event in yaml.parse(body, Loader=yaml.SafeLoader):
            events += 1
            line = event.start_mark.line + 1 if event.start_mark is not None else block.heading_line
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise _Reject(line, "YAML anchors and aliases are not allowed in a policy")
            if events > _MAX_EVENTS:
                raise _Reject(line, "section too large")
        node = yaml.compose(body, Loader=yaml.SafeLoader)
    except _Reject as exc:
        c.error(block.name, exc.message, exc.line)
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else block.heading_line
        last = max((i + 1 for i, text in block.lines if text.strip()), default=block.heading_line)
        line = min(line, last)  # an error found at the end of the stream belongs to the last line
        c.error(block.name, f"not valid YAML: {exc.problem or exc.context}", line)
        return None
    except yaml.YAMLError as exc:
        c.error(block.name, f"not valid YAML: {exc}", block.heading_line)
        return None
    if node is None:
        return None
    try:
        return _value(node, block.name, c, yaml.constructor.SafeConstructor(), 0)
    except _Reject as exc:
        c.error(block.name, exc.message, exc.line)
        return None


def _value(node: yaml.Node, path: str, c: Checker, ctor: yaml.constructor.SafeConstructor, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _Reject(node.start_mark.line + 1, "nested too deep")
    c.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.ScalarNode):
        try:
            value = ctor.construct_object(node)
        except yaml.YAMLError as exc:
            raise _Reject(node.start_mark.line + 1, f"{path}: unreadable value ({exc})") from None
        if isinstance(value, datetime.date | datetime.datetime):
            return value.isoformat()
        if isinstance(value, bytes):
            raise _Reject(node.start_mark.line + 1, f"{path}: binary values are not allowed")
        return value
    if not isinstance(node, yaml.ScalarNode) and node.tag not in (_SEQ, _MAP):
        raise _Reject(node.start_mark.line + 1, f"{path}: the YAML tag {node.tag!r} is not allowed in a policy")
    if isinstance(node, yaml.SequenceNode):
        return [_value(item, f"{path}[{i}]", c, ctor, depth + 1) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Reject(line, f"{path}: a key must be a plain name")
            key = str(ctor.construct_object(key_node))
            key_path = f"{path}.{key}"
            if key in out:
                raise _Reject(line, f"{key_path}: key given twice (first on line {c.lines.get(key_path)})")
            c.lines[key_path] = line
            out[key] = _value(value_node, key_path, c, ctor, depth + 1)
        return out
    raise _Reject(node.start_mark.line + 1, f"{path}: unsupported YAML node")


# -- the sections -------------------------------------------------------------------------------------


# -- entry points -------------------------------------------------------------------------------------


def parse_text(text: str, *, source: Path | None = None) -> ParseResult:
    """Parse KILLSWITCH.md content.  ``source`` (the file's path) names it in problems and anchors
    relative paths; the Policy is None when any error was found."""
    c = Checker(source.name if source is not None else "KILLSWITCH.md")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        c.error("", f"larger than {MAX_BYTES // 1024} KiB: not read")
        return ParseResult(None, tuple(c.problems))
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    title, description, blocks = _split(text, c)
    if title.upper() != "KILLSWITCH":
        c.warn("", "no '# KILLSWITCH' title line", 1)
    seen: dict[str, int] = {}
    parsed: dict[str, dict[str, Any]] = {}
    for block in blocks:
        if block.name not in SECTIONS:
            c.warn(
                block.name,
                f"unknown section '## {block.name}', ignored (known: {', '.join(SECTIONS)})",
                block.heading_line,
            )
            continue
        if block.name in seen:
            c.error(block.name, f"section given twice (first on line {seen[block.name]})", block.heading_line)
            continue
        seen[block.name] = block.heading_line
        c.lines[block.name] = block.heading_line
        data = c.mapping(block.name, _yaml(block, c))
        if data is not None:
            c.lines[block.name] = block.heading_line
            parsed[block.name] = data
    if not seen:
        c.warn("", "no '## SECTION' found: this policy sets nothing")
    built = {name: BUILDERS[name](c, data) for name, data in parsed.items()}
    problems = tuple(sorted(c.problems, key=lambda p: (p.line, p.severity)))
    if any(p.severity == "error" for p in problems):
        return ParseResult(None, problems)
    policy = Policy(
        source=source.resolve() if source is not None else None,
        title=title,
        description=description,
        sections=tuple(seen),
        triggers=built.get("TRIGGERS", Triggers()),
        forbidden=built.get("FORBIDDEN", Forbidden()),
        escalation=built.get("ESCALATION", Escalation()),
        audit=built.get("AUDIT", Audit()),
        override=built.get("OVERRIDE", Override()),
        metadata=MappingProxyType(built.get("METADATA", {})),
        lines=MappingProxyType(dict(c.lines)),
        problems=problems,
    )
    return ParseResult(policy, problems)


def _read(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError(f"no policy file at {path}") from None
    except IsADirectoryError:
        raise PolicyError(f"{path} is a directory, not a policy file") from None
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise PolicyError(f"{path} is larger than {MAX_BYTES // 1024} KiB: not read")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyError(f"{path}:{line}: not UTF-8 text") from None


def parse_file(path: str | Path) -> ParseResult:
    """Parse the file at ``path``; PolicyError if it cannot be read at all (missing, too large, binary)."""
    path = Path(path)
    return parse_text(_read(path), source=path)


def load_policy(path: str | Path = "KILLSWITCH.md") -> Policy:
    """The Policy of a valid file (its warnings in ``policy.problems``); PolicyError listing every
    error otherwise."""
    result = parse_file(path)
    if result.policy is None:
        errors = result.errors
        first = str(errors[0]) if errors else "invalid"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PolicyError(first + more, result.problems)
    return result.policy
