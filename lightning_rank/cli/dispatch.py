"""The ``lightning-rank`` command: LightningCLI's fit/validate/test/predict plus our own subcommands.

``lightning-rank backbones`` lists the discovered backbones; ``lightning-rank bm25`` builds a first-stage run;
``lightning-rank dense`` rescores a run with a pretrained bi-encoder (a teacher to fuse and distil);
``lightning-rank export`` writes a checkpoint as a plain folder, and ``lightning-rank rerank`` reranks a run
with that folder; ``lightning-rank fuse`` interpolates a reranked run with its first-stage run.
Lightning is imported only for the trainer subcommands, after pre-flight checks of the command line and its
config files; bad input (an :class:`~lightning_rank.errors.InputError`) ends with one ``error:`` message and
exit status 2, never a traceback; any other exception is a bug and ends in its traceback and exit status 1.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from lightning_rank.commands.backbones import list_backbones

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
SIGTERM_EXIT_STATUS = 143  # 128 + SIGTERM, as a shell reports a process the signal ended
SIGINT_EXIT_STATUS = 130  # 128 + SIGINT (Ctrl-C)


FUNCTION_SUBCOMMANDS = {
    "bm25": "lightning_rank.commands.bm25:bm25",
    "dense": "lightning_rank.commands.dense:dense",
    "export": "lightning_rank.commands.export:export_checkpoint",
    "fuse": "lightning_rank.commands.fuse:fuse",
    "rerank": "lightning_rank.commands.rerank:rerank",
}


def run_function_subcommand(name: str, args: Sequence[str]) -> int:
    """A subcommand that is one function (its arguments are the options); bad input (an
    :class:`InputError`) ends in one ``error:`` line and exit status 2, anything else in a traceback."""
    import importlib

    from jsonargparse import auto_cli

    from lightning_rank.errors import InputError

    module, _, function = FUNCTION_SUBCOMMANDS[name].partition(":")
    command = getattr(importlib.import_module(module), function)
    try:
        auto_cli(command, args=list(args), as_positional=False)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-rank`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "backbones":
        return list_backbones()
    if argv and argv[0] in FUNCTION_SUBCOMMANDS:
        return run_function_subcommand(argv[0], argv[1:])

    from lightning_rank.cli.preflight import check_argv
    from lightning_rank.errors import InputError

    try:
        check_argv(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lightning_rank.cli.trainer import run_trainer_cli

    try:
        with _clear_parse_errors(argv):
            run_trainer_cli(argv)
    except InputError as err:  # a bad data file, dataset id or option found after parsing: no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SIGTERMException as err:  # stopped at a batch end (callbacks/sigterm.py) or by Lightning's loop
        print("\n".join(getattr(err, "__notes__", [])) or "stopped by SIGTERM", file=sys.stderr)
        return getattr(err, "exit_status", SIGTERM_EXIT_STATUS)
    except KeyboardInterrupt as err:  # Ctrl-C outside a trainer entry point
        return _interrupted(err)
    except SystemExit as err:
        # Lightning ends a trainer entry point that a KeyboardInterrupt (a second Ctrl-C) stopped with exit(1)
        if isinstance(err.__context__, KeyboardInterrupt) and err.code == 1:
            return _interrupted(err.__context__)
        raise
    return 0


def _interrupted(err: KeyboardInterrupt) -> int:
    """Ctrl-C: what was kept (a note the signal callback added, if any) and 128 + SIGINT, as a shell says."""
    print("\n".join(getattr(err, "__notes__", [])) or "interrupted by Ctrl-C", file=sys.stderr)
    return SIGINT_EXIT_STATUS


@contextlib.contextmanager
def _clear_parse_errors(argv: Sequence[str]) -> Iterator[None]:
    """Make jsonargparse's parse errors short and actionable: its ~100-line usage is left out (``--help``
    shows it), and an unknown key is reported with every other unknown key of the command line and the
    ``--config`` files, where each is written and the closest valid key ("did you mean ..."). jsonargparse
    has no hook for this (its ``error_handler`` is deprecated), so its ``error`` is wrapped while we parse."""
    from jsonargparse import ArgumentParser

    from lightning_rank.cli.preflight import explain_unknown_keys

    original = ArgumentParser.error

    def error(self: ArgumentParser, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            original(self, message, ex)  # an inner parser (caught by jsonargparse) or debugging: unchanged
        parser = getattr(ex, "subcommand_parser", None) or self
        explained = explain_unknown_keys(message, [a.dest for a in parser._actions], argv)
        subcommand = parser.prog.split()[-1]
        command = f"lightning-rank {subcommand}" if subcommand in TRAINER_SUBCOMMANDS else "lightning-rank"
        if explained:
            sys.stderr.write("".join(f"error: {line}\n" for line in explained.splitlines()))
            sys.stderr.write(f"Fix or remove these keys; `{command} --help` lists every option.\n")
        else:
            sys.stderr.write(f"error: {message}\n`{command} --help` lists every option.\n")
        self.exit(2)

    ArgumentParser.error = error
    try:
        yield
    finally:
        ArgumentParser.error = original


if __name__ == "__main__":
    sys.exit(main())
