"""``lightning-rank backbones [NAME]``: what is installed and whether it loads, or one backbone's settings."""

from __future__ import annotations

import inspect
import sys
import textwrap
import typing
import warnings

import docstring_parser


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


def describe_backbone(name: str) -> str:
    """A backbone's constructor arguments (type, default, docstring), pooling, default template and
    whether it can pack, read from its class: no model is built. An unknown ``name`` raises the
    registry's ``UnknownBackboneError`` with the closest names."""
    from lightning_rank.backbones.base import Backbone
    from lightning_rank.backbones.registry import available_backbones, get_backbone_class

    cls = get_backbone_class(name)
    entry = available_backbones().get(name)
    origin = f"{entry.value} ({entry.origin})" if entry else f"{cls.__module__}.{cls.__qualname__}"
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    lines = [f"{name}: {origin}", f"  {summary}" if summary else "", "", "arguments (model.backbone_args):"]
    docs = {p.arg_name: p.description for p in docstring_parser.parse(cls.__init__.__doc__ or "").params}
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve here (a plugin's): shown as written
        hints = {}
    for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            lines.append(f"  {'*' if param.kind is param.VAR_POSITIONAL else '**'}{param.name}")
            continue
        kind = hints.get(param.name, param.annotation)
        kind = "untyped" if kind is param.empty else kind if isinstance(kind, str) else _shown(kind)
        default = "required" if param.default is param.empty else f"default {param.default!r}"
        lines.append(f"  {param.name}: {kind}, {default}")
        if docs.get(param.name):
            lines += textwrap.wrap(docs[param.name], 106, initial_indent=" " * 6, subsequent_indent=" " * 6)
    lines += ["", f"pooling: {cls.pooling}", f"default template: {cls.default_template!r}"]
    if cls.forward_packed is Backbone.forward_packed:
        lines.append(f"packing (data.packing): no: {cls.__name__} does not implement forward_packed")
    else:
        condition = (inspect.getdoc(cls.packing_unsupported) or "").split("\n\n")[0].replace("\n", " ")
        lines.append(f"packing (data.packing): yes, as its arguments allow: {condition}")
    return "\n".join(lines)


def _shown(annotation: object) -> str:
    """``str | None``, ``Literal['sdpa', 'eager']``: a type as written in Python, without ``typing.``."""
    return inspect.formatannotation(annotation).replace("typing.", "")
