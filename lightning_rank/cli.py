"""The ``lightning-rank`` command: LightningCLI's fit/validate/test/predict plus our own subcommands.

``lightning-rank backbones`` lists the discovered backbones; ``lightning-rank bm25`` builds a first-stage run.
Lightning is imported only for the trainer subcommands, after a pre-flight check of the backbone name.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence


def list_backbones() -> int:
    """Print one line per discovered backbone: name, distribution and version, object, load status."""
    from lightning_rank.backbones.registry import available_backbones, load_all_backbones

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = available_backbones()
        outcome = load_all_backbones()
    width = max((len(n) for n in entries), default=0)
    for name, entry in sorted(entries.items()):
        result = outcome[name]
        status = "ok" if isinstance(result, type) else f"FAILED to load: {result}"
        print(f"{name:<{width}}  {entry.origin:<22} {entry.value}  [{status}]")
    for w in caught:
        if "claimed by" in str(w.message):
            print(f"warning: {w.message}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-rank`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "backbones":
        return list_backbones()
    if argv and argv[0] in ("bm25", "export"):
        from jsonargparse import auto_cli

        if argv[0] == "bm25":
            from lightning_rank.bm25 import bm25 as command
        else:
            from lightning_rank.export import export_checkpoint as command
        auto_cli(command, args=argv[1:], as_positional=False)
        return 0

    from lightning_rank.backbones.registry import UnknownBackboneError
    from lightning_rank.preflight import check_argv

    try:
        check_argv(argv)
    except UnknownBackboneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from lightning_rank.trainer_cli import run_trainer_cli

    run_trainer_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
