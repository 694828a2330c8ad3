"""``lightning-rank backbones``: what is installed, and whether each backbone loads."""

from __future__ import annotations

import sys
import warnings


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
