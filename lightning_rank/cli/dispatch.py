"""The ``lightning-rank`` command: LightningCLI's fit/validate/test/predict plus our own subcommands.

``lightning-rank --help`` lists every subcommand (:data:`SUBCOMMANDS`), ``--version`` prints the installed
version, and a mistyped subcommand is answered with the closest of all of them, before anything heavy loads.
``lightning-rank backbones`` lists the discovered backbones (``backbones NAME``: one backbone's arguments);
``lightning-rank bm25`` builds a first-stage run;
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

from lightning_rank.cli.function_cli import FUNCTION_SUBCOMMANDS

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
SIGTERM_EXIT_STATUS = 143  # 128 + SIGTERM, as a shell reports a process the signal ended
SIGINT_EXIT_STATUS = 130  # 128 + SIGINT (Ctrl-C)
# every subcommand, in the order `lightning-rank --help` lists them, with its one line
SUBCOMMANDS = {
    "fit": "train a reranker (LightningCLI: --config FILE, dotted --model.*/--data.*/--trainer.* options)",
    "validate": "rerank and score the validation run with a checkpoint (--ckpt_path)",
    "test": "rerank and score the test run with a checkpoint",
    "predict": "rerank the predict run with a checkpoint and write it (--run_writer.output)",
    "bm25": "write a BM25 first-stage run of a dataset's queries",
    "dense": "rescore a run's candidates with a pretrained bi-encoder (sentence-transformers)",
    "rerank": "rerank a run with an exported reranker (a folder `export` wrote)",
    "fuse": "interpolate a reranked run with its first-stage run (weight set or tuned)",
    "compare": "compare runs per query: mean differences, bootstrap intervals, paired t-tests (Holm)",
    "export": "write a fit checkpoint as a plain folder that `rerank` and from_pretrained load",
    "backbones": "list the installed backbones, or print one's arguments (backbones NAME)",
    "report": "plot a fit's logged curves (loss, validation metrics, tokens/s, LR) as PNGs and an HTML page",
}


def usage() -> str:
    """``lightning-rank --help``: every subcommand with its one line."""
    width = max(map(len, SUBCOMMANDS))
    lines = "\n".join(f"  {name:<{width}}  {line}" for name, line in SUBCOMMANDS.items())
    return (
        "usage: lightning-rank [-h] [--version] SUBCOMMAND [OPTIONS]\n\n"
        "Train, evaluate and use cross-encoder text rerankers (PyTorch Lightning).\n\n"
        f"subcommands:\n{lines}\n\n"
        "`lightning-rank SUBCOMMAND --help` lists a subcommand's options. bm25, dense, rerank, fuse,\n"
        "compare and export take --config FILE: the fit config whose data: section declares the\n"
        "collections, datasets and runs, so they are declared once."
    )


def version() -> str:
    from importlib.metadata import version as installed_version

    return installed_version("lightning-rank")


def unknown_subcommand(name: str) -> str:
    """The ``error:`` message for a subcommand that does not exist, naming the closest of all of them."""
    import difflib

    close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1, cutoff=0.5)
    if close:
        return f"unknown subcommand '{name}'; did you mean '{close[0]}'?"
    return f"unknown subcommand '{name}'; the subcommands are {', '.join(SUBCOMMANDS)}"


def run_function_subcommand(name: str, args: Sequence[str]) -> int:
    """A subcommand that is one function (its arguments are the options); bad input (an
    :class:`InputError`) ends in one ``error:`` line and exit status 2, anything else in a traceback."""
    from lightning_rank.cli.function_cli import run_function_subcommand as run
    from lightning_rank.errors import InputError

    try:
        run(name, args)
    except InputError as err:
        print("\n".join([f"error: {err}", *getattr(err, "__notes__", [])]), file=sys.stderr)
        return 2
    return 0


def run_backbones(args: Sequence[str]) -> int:
    """``lightning-rank backbones [NAME]``: the list, or one backbone's arguments and properties."""
    from lightning_rank.commands.backbones import describe_backbone, list_backbones
    from lightning_rank.errors import InputError

    if not args:
        return list_backbones()
    if args[0] in ("-h", "--help"):
        print("usage: lightning-rank backbones [NAME]\n\n" + SUBCOMMANDS["backbones"])
        return 0
    if len(args) > 1:
        print(f"error: backbones takes one NAME, got {' '.join(args)}", file=sys.stderr)
        return 2
    try:
        print(describe_backbone(args[0]))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-rank`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    if first is None or first in ("-h", "--help"):
        print(usage(), file=sys.stdout if first else sys.stderr)
        return 0 if first else 2
    if first == "--version":
        print(f"lightning-rank {version()}")
        return 0
    if first == "backbones":
        return run_backbones(argv[1:])
    if first in FUNCTION_SUBCOMMANDS:
        return run_function_subcommand(first, argv[1:])
    if not first.startswith("-") and first not in TRAINER_SUBCOMMANDS:
        print(f"error: {unknown_subcommand(first)}\n`lightning-rank --help` lists them.", file=sys.stderr)
        return 2

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
