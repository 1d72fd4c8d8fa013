"""FORBIDDEN, decided: which paths a tool call's arguments name, which tool names are forbidden actions,
which hosts the network rule lets through, and the policy file's own protection.

Pure decisions on values; the only file system calls are ``os.path.realpath`` on candidate paths (so a
symlink to ``.env`` is still ``.env``) and ``os.getcwd`` for relative ones.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from .model import HostRule

__all__ = [
    "DEFAULT_ACTION_TOOLS",
    "ActionMap",
    "PathGuard",
    "PathHit",
    "compile_glob",
    "normal_tool_name",
    "parse_host_rule",
]

# The tool names each spec action is known by, beside the action's own name (always included).
# Extend it with ``FORBIDDEN.action_tools`` in the file or ``action_tools=`` in code; names and globs
# are compared after ``normal_tool_name`` (lower case, runs of other characters as ``_``).
DEFAULT_ACTION_TOOLS: Mapping[str, tuple[str, ...]] = {
    "git_push_force": ("git_force_push", "force_push", "git_push_force_with_lease"),
    "git_push_main": ("git_push_master",),
    "drop_database": ("drop_db", "database_drop", "delete_database"),
    "delete_s3_bucket": ("s3_delete_bucket", "delete_bucket"),
    "iam_privilege_escalation": ("iam_attach_admin_policy", "iam_escalate_privileges"),
    "send_bulk_email": ("bulk_email", "send_mass_email", "send_email_batch"),
    "publish_to_production": ("deploy_to_production", "deploy_production", "deploy_prod", "publish_production"),
}

_NAME_RUN = re.compile(r"[^a-z0-9*?\[\]!]+")


@functools.lru_cache(maxsize=4096)
def normal_tool_name(name: str) -> str:
    """``Git-Push.Force`` → ``git_push_force``: how tool and action names are compared."""
    return _NAME_RUN.sub("_", name.strip().lower()).strip("_")


class ActionMap:
    """FORBIDDEN ``actions`` as tool names: each action forbids the tools of its own name, the built-in
    aliases of ``DEFAULT_ACTION_TOOLS`` and whatever ``extra`` adds (names or ``fnmatch`` globs)."""

    def __init__(self, actions: Iterable[str], extra: Mapping[str, Iterable[str]] | None = None) -> None:
        self.actions = tuple(dict.fromkeys(normal_tool_name(a) for a in actions))
        tools: dict[str, list[str]] = {}
        for action in self.actions:
            names = [action, *DEFAULT_ACTION_TOOLS.get(action, ())]
            for key, more in (extra or {}).items():
                if normal_tool_name(key) == action:
                    names.extend(more)
            tools[action] = list(dict.fromkeys(normal_tool_name(n) for n in names))
        self.tools: Mapping[str, tuple[str, ...]] = {a: tuple(n) for a, n in tools.items()}
        self._exact: dict[str, str] = {}
        self._globs: list[tuple[str, str]] = []
        for action, aliases in self.tools.items():
            for name in aliases:
                if any(c in name for c in "*?["):
                    self._globs.append((name, action))
                else:
                    self._exact.setdefault(name, action)

    def __bool__(self) -> bool:
        return bool(self.actions)

    def match(self, tool: str) -> str | None:
        """The forbidden action ``tool`` performs, or None."""
        name = normal_tool_name(tool)
        action = self._exact.get(name)
        if action is None:
            for pattern, candidate in self._globs:
                if fnmatch.fnmatchcase(name, pattern):
                    return candidate
        return action


# -- paths --------------------------------------------------------------------------------------------

_CASELESS = sys.platform in ("darwin", "win32")


def _glob_regex(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern.startswith("[!", i) or pattern.startswith("[]", i) else i + 1)
            if end < 0:
                raise ValueError(f"unclosed '[' in {pattern!r}")
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A path glob as a regular expression over ``/``-separated paths: ``*`` and ``?`` stay within one
    name, ``**`` crosses directories, ``[...]`` is a class.  The expression also matches everything
    below a match (a forbidden directory forbids what it holds).  ValueError for a malformed glob."""
    if not pattern or "\x00" in pattern:
        raise ValueError("empty pattern" if not pattern else "NUL in pattern")
    while "**/**" in pattern:
        pattern = pattern.replace("**/**", "**")
    if pattern.count("*") > 8 or len(pattern) > 1024:
        # Each wildcard is a loop of the expression: bounded, so that no argument makes matching slow.
        raise ValueError("more than 8 wildcards" if len(pattern) <= 1024 else "longer than 1024 characters")
    flags = re.IGNORECASE if _CASELESS else 0
    return re.compile(_glob_regex(pattern) + r"(?:/.*)?\Z", flags | re.DOTALL)


def _posix(path: str) -> str:
    return path.replace(os.sep, "/") if os.sep != "/" else path


Kind = Literal["files", "directories", "protected"]


@dataclass(frozen=True)
class _Rule:
    kind: Kind
    pattern: str  # as written in the file
    regex: re.Pattern[str]
    anywhere: bool  # a pattern without "/": matched against every name of the path

    def matches(self, path: str) -> bool:
        if self.anywhere:
            parts = path.split("/")
            return any(self.regex.match(part) for part in parts if part)
        return self.regex.match(path) is not None


@dataclass(frozen=True)
class PathHit:
    """A tool argument that names a forbidden or protected path."""

    kind: Kind
    pattern: str
    argument: str  # the string as the tool received it (cut to 200 characters)
    path: str  # the absolute path it named


# Words of a command or text that may be paths: anything between quotes, spaces and shell operators.
_WORD = re.compile(r"""[^\s'"`;|&<>()=,]+""")
_MAX_REALPATH = 256  # symlink resolution per call, beyond that paths are compared as written
_MAX_STRINGS = 10_000  # strings looked at per call; a call with more is refused (fail closed)
_MAX_DEPTH = 32


def _pathlike(word: str) -> bool:
    return "/" in word or "\\" in word or word.startswith((".", "~")) or "." in word


class PathGuard:
    """FORBIDDEN ``files`` and ``directories`` and the protected files, matched against tool arguments.

    Patterns: ``~`` is expanded; ``/abs`` is absolute; ``**/x`` matches at any depth anywhere; a
    pattern without ``/`` (``.env``, ``*.pem``) matches a name at any depth (as in ``.gitignore``);
    any other relative pattern is relative to ``root`` (the policy file's directory).  Candidates:
    every string in the (nested) arguments, whole and word by word, ``~`` expanded, relative to the
    working directory, normalised, and with symlinks resolved.
    """

    def __init__(
        self,
        files: Iterable[str] = (),
        directories: Iterable[str] = (),
        *,
        root: Path,
        protected: Iterable[Path] = (),
    ) -> None:
        self.root = Path(os.path.realpath(root))
        rules: list[_Rule] = []
        for kind, patterns in (("files", files), ("directories", directories)):
            for pattern in patterns:
                rules.append(self._rule(kind, pattern))  # type: ignore[arg-type]
        self._rules = tuple(rules)
        flags = re.IGNORECASE if _CASELESS else 0
        self._protected = tuple(
            (str(p), re.compile(re.escape(_posix(os.path.realpath(p))) + r"\Z", flags)) for p in protected
        )
        # With no FORBIDDEN paths, only the protected files are looked for: a string that does not
        # contain one of their names (as given, or as their real path ends) cannot name one, so the
        # scan (realpath on every word) is skipped for it.  What this misses: a symlink of another name
        # made before the agent started (the agent's own ``ln -s`` names the file and is refused).
        # Case-blind, whatever the platform: the pre-filter errs on the scan's side.
        names = {Path(p).name.lower() for p in protected} | {Path(os.path.realpath(p)).name.lower() for p in protected}
        self._names = tuple(sorted(n for n in names if n))
        self.has_rules = bool(self._rules)  # FORBIDDEN files or directories, not only protected files

    def __bool__(self) -> bool:
        return bool(self._rules or self._protected)

    def _rule(self, kind: Kind, pattern: str) -> _Rule:
        text = pattern.strip()
        if text.startswith("./"):
            text = text[2:]
        expanded = os.path.expanduser(text) if text.startswith("~") else text
        expanded = _posix(expanded).rstrip("/") or "/"
        while expanded.endswith("/**") and len(expanded) > 3:
            expanded = expanded[:-3]  # "d/**" is d and all below it, as every rule already matches
        if expanded.startswith("**/"):
            return _Rule(kind, pattern, compile_glob(expanded), anywhere=False)
        if "/" not in expanded:
            return _Rule(kind, pattern, compile_glob(expanded), anywhere=True)
        if not (expanded.startswith("/") or re.match(r"[A-Za-z]:/", expanded)):
            expanded = _posix(str(self.root)).rstrip("/") + "/" + expanded
        return _Rule(kind, pattern, compile_glob(expanded), anywhere=False)

    def match_path(self, path: str) -> tuple[Kind, str] | None:
        """The rule (kind, pattern) a normalised absolute path falls under, protected files first."""
        for pattern, regex in self._protected:
            if regex.match(path):
                return "protected", pattern
        for rule in self._rules:
            if rule.matches(path):
                return rule.kind, rule.pattern
        return None

    def _candidates(self, text: str, cwd: str, budget: list[int]) -> Iterator[str]:
        spaced = any(c in text for c in " \t\n'\";|&<>()=,`")
        # The whole string when it can be one path (one word, or path-like), then its path-like words.
        words = [text] if len(text) <= 4096 and "\n" not in text and (not spaced or _pathlike(text)) else []
        if spaced:
            words.extend(w for w in _WORD.findall(text) if _pathlike(w))
        seen: set[str] = set()
        for word in words:
            word = word.strip()
            if len(word) > 4096:  # longer than any path the system takes
                continue
            if word.startswith("file://"):
                word = word[7:]
            if not word or word in seen or "\x00" in word:
                continue
            seen.add(word)
            expanded = os.path.expanduser(word) if word.startswith("~") else word
            joined = os.path.normpath(os.path.join(cwd, expanded))
            yield _posix(joined)
            if budget[0] > 0:
                budget[0] -= 1
                real = os.path.realpath(joined)
                if real != joined:
                    yield _posix(real)

    def scan(self, args: Any, *, cwd: str | None = None) -> PathHit | None:
        """The first argument (at any depth of dicts, lists, tuples) naming a forbidden or protected
        path, or None.  Arguments too many or too deep to look at are refused as a hit."""
        if not self:
            return None
        if not self._rules and self.clear_fast(args):
            return None
        here = cwd or os.getcwd()
        budget = [_MAX_REALPATH]
        count = 0
        for text in _strings(args, 0):
            count += 1
            if count > _MAX_STRINGS or text is None:
                what = "more strings than M99 inspects" if text is not None else "arguments nested too deep"
                return PathHit("protected", "(arguments)", what, "")
            for path in self._candidates(text, here, budget):
                found = self.match_path(path)
                if found is not None:
                    return PathHit(found[0], found[1], text[:200], path)
        return None

    def clear(self, args: Any) -> bool:
        """True when ``args`` certainly names nothing of this guard: there are only protected files
        and no string mentions one.  False means: ``scan`` them."""
        return not self._rules and self.clear_fast(args)

    def clear_fast(self, args: Any) -> bool:
        """``clear`` for a caller that already knows there are no FORBIDDEN rules; never raises
        (False, so the caller scans and fails closed there).  Asked before every allowed tool call:
        the usual input, a flat mapping of scalars or a string, is looked at here in one frame."""
        names = self._names
        kind = type(args)
        if kind is dict and len(args) <= 64:
            for key, value in args.items():
                if type(value) is str:
                    text = value.lower()
                    for name in names:
                        if name in text:
                            return False
                elif not isinstance(value, _SCALARS):
                    break  # nested: the general walk below
                if type(key) is str:
                    text = key.lower()
                    for name in names:
                        if name in text:
                            return False
            else:
                return True
        elif kind is str:
            text = args.lower()
            for name in names:
                if name in text:
                    return False
            return True
        elif args is None:
            return True
        try:
            return not self._mentions(args)
        except Exception:
            return False

    def _named(self, text: str) -> bool:
        """Whether ``text`` contains a protected file's name."""
        text = text.lower()
        for name in self._names:
            if name in text:
                return True
        return False

    def _mentions(self, args: Any) -> bool:
        """Whether any string of ``args``, at any depth, contains a protected file's name (or there is
        too much to look at)."""
        for count, text in enumerate(_strings(args, 0)):
            if text is None or count >= _MAX_STRINGS:
                return True
            if self._named(text):
                return True
        return False


_SCALARS = (int, float, bool, type(None))


def _strings(value: Any, depth: int) -> Iterator[str | None]:
    """Every string in a nested value (None once when it is nested deeper than M99 looks)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, _SCALARS):
        return
    elif isinstance(value, bytes | bytearray):
        yield bytes(value[:65536]).decode("utf-8", "replace")
    elif isinstance(value, os.PathLike):
        path = os.fspath(value)
        yield path if isinstance(path, str) else path.decode("utf-8", "replace")
    elif depth >= _MAX_DEPTH:
        yield None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and _pathlike(key):  # argument names are not paths; a path as a key is
                yield key
            yield from _strings(item, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _strings(item, depth + 1)


# -- network ------------------------------------------------------------------------------------------

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def parse_host_rule(text: str) -> HostRule:
    """One ``allowlist`` entry: ``api.example.com``, ``*.example.com``, ``example.com:443``, an IP,
    ``10.0.0.0/8``, ``[2001:db8::1]:443`` or a URL (its host and port).  ValueError if it is none."""
    raw = text.strip()
    if not raw:
        raise ValueError("empty host")
    candidate = raw
    if "://" in candidate:
        parts = urlsplit(candidate)
        if not parts.hostname:
            raise ValueError(f"no host in {raw!r}")
        return _host_rule(raw, parts.hostname, parts.port)
    try:
        network = ipaddress.ip_network(candidate.strip("[]"), strict=False)
        return HostRule(raw, network=network)
    except ValueError:
        pass
    port: int | None = None
    if candidate.startswith("["):
        host, _, rest = candidate[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad port in {raw!r}")
            port = int(rest[1:])
        return _host_rule(raw, host, port)
    if candidate.count(":") == 1:
        candidate, _, port_text = candidate.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"bad port in {raw!r}")
        port = int(port_text)
    return _host_rule(raw, candidate, port)


def _host_rule(raw: str, host: str, port: int | None) -> HostRule:
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port out of range in {raw!r}")
    host = host.strip().lower().rstrip(".")
    try:
        addr = ipaddress.ip_address(host)
        return HostRule(raw, network=ipaddress.ip_network(addr), port=port)
    except ValueError:
        pass
    name = host[2:] if host.startswith("*.") else host.lstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"not a host name: {raw!r}")
    wildcard = host.startswith(("*.", "."))
    return HostRule(raw, host=("*." + name) if wildcard else name, port=port)
