"""The subcommands that are one function (bm25, dense, rerank, fuse, compare, export): its parameters are
the options.

The parser is jsonargparse's, built from the function's signature and docstring, so types are checked and
``--help`` documents every option. ``--config`` and ``--data.*`` are read first (``function_config``):
their values are parsed before the command line's, so the command line wins.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import yaml

from lightning_rank.cli.function_config import DEFAULT_STAGE, describe, resolve
from lightning_rank.errors import InputError

FUNCTION_SUBCOMMANDS = {
    "bm25": "lightning_rank.commands.bm25:bm25",
    "compare": "lightning_rank.commands.compare:compare",
    "dense": "lightning_rank.commands.dense:dense",
    "export": "lightning_rank.commands.export:export_checkpoint",
    "fuse": "lightning_rank.commands.fuse:fuse",
    "rerank": "lightning_rank.commands.rerank:rerank",
    "report": "lightning_rank.commands.plots:report",
}
_NOT_OPTIONS = ("config", "stage", "set", "__path__")
#: subcommands whose first argument may be given without its option name (``lightning-rank report RUN_DIR``)
POSITIONAL = {"report": "run_dir"}


def load_function(name: str) -> Callable[..., Any]:
    module, _, function = FUNCTION_SUBCOMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def build_parser(name: str, function: Callable[..., Any]) -> Any:
    """``lightning-rank NAME``'s parser: the function's options, ``--config`` and ``--stage``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    summary = (inspect.getdoc(function) or "").split("\n\n")[0]
    parser = ArgumentParser(prog=f"lightning-rank {name}", description=f"{summary}\n\n{describe(name)}")
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a fit config, or a file of these options (see above)"
    )
    parser.add_argument(
        "--stage",
        type=Literal["train", "val", "test", "predict"],
        default=DEFAULT_STAGE,
        help="which data.<stage>_dataset / data.<stage>_run of --config (or --data.*) feed this command",
    )
    parser.add_argument(
        "--set",
        type=str | None,
        default=None,
        help="which entry (by name) of the config's data.<stage>_datasets feeds this command, where it lists "
        "several; one entry is used without it",
    )
    parser.add_function_arguments(function, as_positional=False)
    return parser


def run_function_subcommand(name: str, argv: Sequence[str]) -> Any:
    """Parse ``argv`` for ``lightning-rank NAME`` and call its function; returns what it returns."""
    function = load_function(name)
    if name in POSITIONAL and argv and not argv[0].startswith("-"):
        argv = [f"--{POSITIONAL[name]}", *argv]
    options = [p for p in inspect.signature(function).parameters]
    resolved = resolve(name, options, argv)
    parser = build_parser(name, function)
    first = ["--config", yaml.safe_dump(resolved.values)] if resolved.values else []
    with _name_origins(resolved.origins):
        config = parser.parse_args([*first, *resolved.rest])
    init = parser.instantiate_classes(config)
    try:
        return function(**{k: v for k, v in init.items() if k not in _NOT_OPTIONS})
    except InputError as err:  # "--dataset: ..." of a value the config gave: say where it is written
        for option, origin in resolved.origins.items():
            if str(err).startswith(f"--{option}") and f"--{option}" not in " ".join(resolved.rest):
                err.add_note(f"(--{option} is {origin})")
        raise


class _name_origins:
    """While parsing: a value that came from a config file or ``--data.*`` and fails its type check is
    reported with where it was written (jsonargparse names only the option)."""

    def __init__(self, origins: dict[str, str]) -> None:
        self.origins = origins

    def __enter__(self) -> None:
        from jsonargparse import ArgumentParser

        self.original = original = ArgumentParser.error
        origins = self.origins

        def error(parser: ArgumentParser, message: str, ex: Exception | None = None) -> Any:
            where = [f"{key} is {origin}" for key, origin in origins.items() if f'"{key}"' in message]
            if where and parser.exit_on_error:
                message = f"{message}\n({'; '.join(where)})"
            return original(parser, message, ex)

        ArgumentParser.error = error

    def __exit__(self, *exc: object) -> None:
        from jsonargparse import ArgumentParser

        ArgumentParser.error = self.original
