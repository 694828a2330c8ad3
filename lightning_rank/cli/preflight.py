"""Checks that run before Lightning is imported, so that the commonest mistakes fail in well under a second.

Importing Lightning and torch takes seconds; a misspelled backbone name, a malformed config file or a group
size that cannot work should not. This reads only the ``--config`` files and a few dotted overrides of the
command line (the full parser validates everything else afterwards, with the same rules), and helps explain
the full parser's unknown-key errors (:func:`explain_unknown_keys`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import yaml

from lightning_rank.backbones.registry import check_backbone_name
from lightning_rank.errors import ConfigError, check_group_size

CONFIG_FLAGS = ("--config", "-c")
# Syntax errors only: a tag jsonargparse resolves (or not) is left to the full parser.
_YAML_SYNTAX_ERRORS = (yaml.scanner.ScannerError, yaml.parser.ParserError, yaml.composer.ComposerError)


def config_paths(argv: Sequence[str]) -> list[str]:
    """The values of ``--config``/``-c`` on a command line, in order (files or inline YAML)."""
    return [value for flag, value in _flags(argv) if flag in CONFIG_FLAGS]


def load_config(path: str) -> Any:
    """A ``--config`` file's content, or None when ``path`` is not a file (jsonargparse then reads it as
    inline YAML or reports it missing). Malformed YAML raises :class:`ConfigError` with file and line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{path}, line {line} (byte {err.start}): not valid UTF-8; save the config file as UTF-8"
        ) from None
    try:
        return yaml.safe_load(text)
    except _YAML_SYNTAX_ERRORS as err:
        raise ConfigError(_describe_yaml_error(path, err)) from None
    except yaml.YAMLError:
        return None  # e.g. a tag: the full parser decides and reports


def _describe_yaml_error(path: str, err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else path
    context = ""
    if err.context:
        context = f" ({err.context}"
        if err.context_mark and (not mark or err.context_mark.line != mark.line):
            context += (
                f" that starts at line {err.context_mark.line + 1}, column {err.context_mark.column + 1}"
            )
        context += ")"
    return (
        f"{where}: malformed YAML: {err.problem}{context}. Check the indentation there (spaces, not tabs; "
        "a key's children indented under it, siblings aligned) and that every quote, [ and { is closed."
    )


def backbone_from_argv(argv: Sequence[str], configs: dict[str, Any] | None = None) -> str | None:
    """The backbone a command line selects (last one wins, as in LightningCLI), or None if unknown here.
    ``configs``: the ``--config`` files already loaded (path -> content); read here otherwise."""
    if configs is None:
        configs = {p: _safe_load(p) for p in config_paths(argv)}
    value = _option_from_argv(argv, "model", "backbone", configs)
    return value if isinstance(value, str) and value else None


def _safe_load(path: str) -> Any:
    try:
        return load_config(path)
    except ConfigError:
        return None


def _option_from_argv(argv: Sequence[str], group: str, key: str, configs: dict[str, Any]) -> Any:
    """The last value of ``group.key`` given by a ``--config`` file or a ``--group.key`` override."""
    value = None
    for flag, arg in _flags(argv):
        if flag in CONFIG_FLAGS:
            section = configs.get(arg)
            section = section.get(group) if isinstance(section, dict) else None
            if isinstance(section, dict):
                section = section.get("init_args", section)
                if isinstance(section, dict) and key in section:
                    value = section[key]
        elif flag == f"--{group}.{key}":
            value = arg
    return value


def _flags(argv: Sequence[str]) -> Iterator[tuple[str, str]]:
    args = list(argv)
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        yield flag, value


def check_argv(argv: Sequence[str]) -> None:
    """Fail fast on malformed ``--config`` files (:class:`ConfigError`), a backbone that is not installed
    (``UnknownBackboneError``) and a group size below 2 (:class:`ConfigError`)."""
    configs = {path: load_config(path) for path in config_paths(argv)}
    backbone = backbone_from_argv(argv, configs)
    if backbone is not None:
        check_backbone_name(backbone)
    group_size = _option_from_argv(argv, "data", "group_size", configs)
    try:
        group_size = int(group_size) if group_size is not None else None
    except (TypeError, ValueError):
        group_size = None  # not a number: the full parser reports the type
    if group_size is not None:
        check_group_size(group_size)


# -- unknown keys ----------------------------------------------------------------------------------------
_REPORTED_KEY = (
    re.compile(r"Subcommand '[^']+' does not accept option '(?P<key>[^']+)'"),
    re.compile(r"Group '(?P<group>[^']+)' does not accept option '(?P<key>[^']+)'"),
    re.compile(r"Option '(?P<key>[^']+)' is not accepted"),
)
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.*)")
_NOT_KEYS = {"help", "config", "print_config"}


def reported_unknown_keys(message: str) -> list[str]:
    """The keys a jsonargparse error message says are not accepted (empty for other errors)."""
    for pattern in _REPORTED_KEY:
        match = pattern.search(message)
        if match:
            group = match.groupdict().get("group")
            return [f"{group}.{match['key']}" if group else match["key"]]
    match = _UNRECOGNIZED.search(message)
    if match:
        return [a[2:].partition("=")[0] for a in match["args"].split() if a.startswith("--")]
    return []


def explain_unknown_keys(message: str, valid: Iterable[str], argv: Sequence[str]) -> str | None:
    """For a jsonargparse unknown-key error: every unknown key of the command line and its ``--config``
    files, where it is written and the closest valid key; None when ``message`` is another error."""
    reported = reported_unknown_keys(message)
    if not reported:
        return None
    keys = {k for k in valid if k not in _NOT_KEYS and not k.endswith(".help")}
    found: dict[str, str] = {}
    for path in config_paths(argv):
        for key, line in _unknown_in_config(path, keys):
            found.setdefault(key, f"{path}, line {line}")
    for key in reported:
        found.setdefault(key, "command line" if f"--{key}" in " ".join(argv) else "config")
    lines = []
    for key, where in found.items():
        close = suggest_key(key, keys)
        hint = f": did you mean '{close}'?" if close else ""
        lines.append(f"unknown option '{key}' ({where}){hint}")
    return "\n".join(lines)


def suggest_key(key: str, valid: Iterable[str]) -> str | None:
    """The valid key closest to a mistyped one: first a sibling with a close last part, then any close key."""
    valid = sorted(valid)
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        return siblings[close[0]]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.75)
    return close[0] if close else None


def _unknown_in_config(path: str, valid: set[str]) -> list[tuple[str, int]]:
    """Keys of a config file that are neither valid nor inside a valid key's value, with their lines."""
    try:
        with open(path, encoding="utf-8") as f:
            root = yaml.compose(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    groups = {k.rsplit(".", i)[0] for k in valid for i in range(1, k.count(".") + 1)}
    unknown: list[tuple[str, int]] = []

    def walk(node: yaml.Node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            name = str(key_node.value)
            if prefix and name == "init_args":
                walk(value_node, prefix)
                continue
            key = f"{prefix}.{name}" if prefix else name
            if key in groups:
                walk(value_node, key)
            elif key not in valid and not (prefix and name in ("class_path", "dict_kwargs")):
                unknown.append((key, key_node.start_mark.line + 1))

    walk(root, "")
    return unknown
