"""Backbone discovery through ``importlib.metadata`` entry points, group ``lightning_rank.backbones``.

Built-ins are declared in our own pyproject.toml, so they and third-party plugins go down one code path.
Discovery reads metadata only (fast, imports nothing); loading imports a backbone's module on first use and
caches the outcome. A plugin that fails to import gives a warning naming it and the error; the others work.
Two distributions claiming one name give a warning, and the first one found (ours first) wins.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from lightning_rank.errors import ConfigError, UnknownBackboneError

if TYPE_CHECKING:
    from lightning_rank.backbones.base import Backbone

GROUP = "lightning_rank.backbones"
OWN_DISTRIBUTION = "lightning-rank"


class BackbonePluginWarning(UserWarning):
    """A backbone plugin could not be loaded, or two plugins claim one name."""


@dataclass(frozen=True)
class BackboneEntry:
    """One discovered backbone: its name, the object it points at and the distribution that ships it."""

    name: str
    value: str
    distribution: str
    version: str

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version}".strip()


def _distribution_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", ""
    return dist.metadata["Name"] or "unknown", dist.version or ""


@functools.cache
def available_backbones() -> dict[str, BackboneEntry]:
    """All backbone entry points by name (metadata only; nothing is imported)."""
    found: dict[str, BackboneEntry] = {}
    eps = sorted(entry_points(group=GROUP), key=lambda ep: _distribution_of(ep)[0] != OWN_DISTRIBUTION)
    for ep in eps:
        dist, version = _distribution_of(ep)
        entry = BackboneEntry(ep.name, ep.value, dist, version)
        if ep.name in found:
            if found[ep.name].value != entry.value:
                warnings.warn(
                    f"backbone name {ep.name!r} is claimed by {found[ep.name].origin} "
                    f"({found[ep.name].value}) and by {entry.origin} ({entry.value}); using the first. "
                    "Name one of them by import path to choose explicitly.",
                    BackbonePluginWarning,
                    stacklevel=2,
                )
            continue
        found[ep.name] = entry
    return found


def is_import_path(name: str) -> bool:
    """``package.module:Class`` or ``package.module.Class`` name a backbone class directly."""
    return ":" in name or "." in name


def check_backbone_name(name: str) -> None:
    """Fail fast (before anything heavy is imported) if ``name`` is neither a known entry point nor an
    import path."""
    if is_import_path(name) or name in available_backbones():
        return
    known = sorted(available_backbones())
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone {name!r}.{hint} Available backbones: {', '.join(known)}. "
        "Name one of these, an import path such as 'my_pkg.module:MyBackbone', or install the plugin "
        "that provides it (`lightning-rank backbones` lists what is installed)."
    )


def _import_object(path: str) -> object:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    module = importlib.import_module(module_name)
    obj: object = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@functools.cache
def _load(name: str) -> type[Backbone]:
    from lightning_rank.backbones.base import Backbone

    check_backbone_name(name)
    entry = available_backbones().get(name)
    target = entry.value if entry else name
    try:
        cls = _import_object(target)
    except Exception as err:
        origin = f" (from {entry.origin})" if entry else ""
        raise ImportError(f"backbone {name!r}{origin} failed to import {target}: {err!r}") from err
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise ConfigError(
            f"backbone {name!r} points at {target}, which is not a lightning_rank Backbone subclass"
        )
    return cls


def get_backbone_class(name: str) -> type[Backbone]:
    """The backbone class for an entry-point name or an import path (cached)."""
    return _load(name)


def load_all_backbones() -> dict[str, type[Backbone] | Exception]:
    """Try to load every discovered backbone; failures are returned (and warned about), not raised."""
    outcome: dict[str, type[Backbone] | Exception] = {}
    for name in available_backbones():
        try:
            outcome[name] = _load(name)
        except Exception as err:
            warnings.warn(
                f"backbone plugin {name!r} could not be loaded: {err}", BackbonePluginWarning, stacklevel=2
            )
            outcome[name] = err
    return outcome


def build_backbone(name: str, args: dict | None = None) -> Backbone:
    """Instantiate a backbone from its name and constructor arguments, with errors that name bad keys."""
    cls = get_backbone_class(name)
    args = dict(args or {})
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(args) - set(params) - {"self"})
        if unknown:
            valid = sorted(p for p in params if p != "self")
            raise ConfigError(
                f"backbone {name!r} ({cls.__name__}) got unknown argument(s) {unknown}; "
                f"valid arguments: {valid}"
            )
    return cls(**args)
