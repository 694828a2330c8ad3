"""``--config`` for the function subcommands: a fit config's ``data:`` section feeds their options.

A collection, its datasets and its runs are declared once, in the ``data:`` section of a fit config, and
``bm25``, ``dense``, ``rerank``, ``fuse`` and ``export`` read them from there (:data:`FROM_DATA` says which
data key feeds which option; ``--stage`` picks the stage of the ``data.<stage>_*`` keys). The config's
other fit sections (``model:``, ``trainer:``, ...) are ignored, even where the command has an option of that
name (rerank's ``--model``); its other keys named as a command's option set it (``output: run.trec``). A
config without ``data:``, ``model:`` or ``trainer:`` holds the command's own options alone, as before. Any
other key is refused with the closest valid one. ``--data.KEY VALUE`` on the command line is the dotted
spelling of the same data keys; the plain options win over both.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from lightning_rank.cli.preflight import CONFIG_FLAGS, load_config, suggest_key
from lightning_rank.errors import ConfigError

STAGES = ("train", "val", "test", "predict")
DEFAULT_STAGE = "test"
# a config with one of these is a fit config: its fit settings are skipped, not read as options
FIT_SECTIONS = frozenset({"data", "model", "trainer"})
# option <- data key; "{stage}" is the value of --stage
_COLLECTIONS = {"local_collections": "local_collections"}
FROM_DATA: dict[str, dict[str, str]] = {
    "bm25": {**_COLLECTIONS, "dataset": "{stage}_dataset", "output": "{stage}_run"},
    "dense": {**_COLLECTIONS, "dataset": "{stage}_dataset", "run": "{stage}_run"},
    "rerank": {
        **_COLLECTIONS,
        "dataset": "{stage}_dataset",
        "run": "{stage}_run",
        "depth": "rerank_depth",
        "batch_size": "eval_batch_size",
    },
    "fuse": {**_COLLECTIONS, "qrels": "{stage}_dataset", "first_stage": "{stage}_run"},
    "compare": {**_COLLECTIONS, "qrels": "{stage}_dataset"},
    "export": {},
    "report": {**_COLLECTIONS},
}
# the top-level keys of a fit config (`lightning-rank fit --print_config`) other than data
FIT_KEYS = frozenset({
    "seed_everything", "trainer", "model", "optimizer", "lr_scheduler", "ckpt_path", "tokens_per_sec",
    "run_writer", "validate_before_fit", "validate_after_fit", "checkpoint_every_n_steps", "metrics_file",
    "weights_only", "checkpoint_monitor", "per_query_file",
})  # fmt: skip


@dataclass
class FunctionArgs:
    """A function subcommand's command line with its ``--config`` files and ``--data.*`` options resolved:
    ``values`` (option -> value) to parse first, ``origins`` (option -> where its value was written) and
    the remaining command line."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    rest: list[str] = field(default_factory=list)


def data_keys() -> list[str]:
    """Every key of a fit config's ``data:`` section: RerankDataModule's arguments."""
    from lightning_rank.datamodules.datamodule import RerankDataModule

    return [p for p in inspect.signature(RerankDataModule.__init__).parameters if p != "self"]


def describe(command: str) -> str:
    """The ``--config`` paragraph of a command's help: which data key feeds which option."""
    fed = FROM_DATA[command]
    if not fed:
        return (
            "--config FILE takes a fit config (its data: section is checked, nothing in it is an option "
            "of this command) or a file of this command's own options."
        )
    pairs = ", ".join(f"data.{key} -> --{option}" for option, key in fed.items())
    return (
        f"--config FILE takes a fit config: its data: section feeds {pairs} ({{stage}}: --stage, default "
        f"{DEFAULT_STAGE}); model:, trainer: and the other fit sections are ignored; other keys named as "
        "this command's options set them. --data.KEY VALUE sets one of those data keys. Options given on the "
        "command line win over both."
    )


def resolve(command: str, options: Sequence[str], argv: Sequence[str]) -> FunctionArgs:
    """Read ``argv``'s ``--config`` files and ``--data.KEY`` options into values of ``options`` (the
    command's parameter names); :class:`ConfigError` for a key that is not valid, with the closest one."""
    resolved = FunctionArgs()
    configs, dotted, resolved.rest = _split(argv)
    stage = _stage(argv)
    fed = {option: key.format(stage=stage) for option, key in FROM_DATA[command].items()}
    valid_data = data_keys()
    data: dict[str, tuple[Any, str]] = {}
    for path in configs:
        content = _read(path)
        fit_config = bool(FIT_SECTIONS & set(content))  # else a file of this command's own options
        for key, value in content.items():
            if key == "data":
                for name, item in _section(value, path).items():
                    _check_data_key(name, valid_data, path)
                    data[name] = (item, f"data.{name} in {path}")
            elif fit_config and key in FIT_KEYS:
                continue  # a fit setting, even where this command has an option of that name (--model)
            elif key in options:
                resolved.values[key] = value
                resolved.origins[key] = f"{key} in {path}"
            else:
                close = suggest_key(key, [*options, "data", *FIT_KEYS])
                hint = f"; did you mean '{close}'?" if close else ""
                raise ConfigError(
                    f"{path}: unknown key '{key}'{hint} A config for `lightning-rank {command}` is a fit "
                    f"config (its data: section feeds this command) or holds this command's own options "
                    f"({', '.join(options)})"
                )
    for name, value in dotted.items():
        _check_data_key(name, valid_data, "the command line")
        if name not in fed.values():
            uses = ", ".join(f"--data.{k}" for k in fed.values()) or "no data key"
            raise ConfigError(
                f"--data.{name}: `lightning-rank {command}` does not use data.{name} (with --stage {stage} "
                f"it reads {uses}); remove it, or pick the stage whose keys you mean with --stage"
            )
        data[name] = (value, f"--data.{name}")
    _from_set_list(data, stage, _flag_value(argv, "--set"))
    for option, key in fed.items():
        if key in data and data[key][0] is not None:
            resolved.values[option], resolved.origins[option] = data[key]
    return resolved


def _from_set_list(data: dict[str, tuple[Any, str]], stage: str, chosen: str | None) -> None:
    """``data.<stage>_datasets`` feeds ``<stage>_dataset`` / ``<stage>_run`` as the singular keys would: its
    one entry, or the one named by ``--set``."""
    sets, where = data.get(f"{stage}_datasets", (None, ""))
    if not sets or data.get(f"{stage}_dataset", (None, ""))[0] is not None:
        return
    from lightning_rank.datamodules.eval_sets import eval_sets

    listed = eval_sets(stage, None, None, sets)
    names = [s.name for s in listed]
    if chosen is None and len(listed) > 1:
        raise ConfigError(
            f"{where} lists {len(listed)} sets ({', '.join(names)}): choose one with --set NAME, or pass "
            "--dataset (and its run) directly"
        )
    picked = [s for s in listed if chosen is None or s.name == chosen]
    if not picked:
        raise ConfigError(f"--set {chosen}: {where} has no set of that name; its sets are {', '.join(names)}")
    origin = f"{where} (set {picked[0].name})"
    data[f"{stage}_dataset"] = (picked[0].dataset, origin)
    if picked[0].run is not None and data.get(f"{stage}_run", (None, ""))[0] is None:
        data[f"{stage}_run"] = (picked[0].run, origin)


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The last value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``; "" when it ends ``argv``), or
    None where it is absent."""
    value = None
    for i, arg in enumerate(argv):
        name, eq, given = arg.partition("=")
        if name == flag:
            value = given if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    return value


def _split(argv: Sequence[str]) -> tuple[list[str], dict[str, Any], list[str]]:
    """``--config`` values, ``--data.KEY`` values (YAML, as jsonargparse reads them) and the rest."""
    configs: list[str] = []
    dotted: dict[str, Any] = {}
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        is_config, is_data = flag in CONFIG_FLAGS, flag.startswith("--data.")
        if not (is_config or is_data):
            rest.append(args[i])
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"{flag} expects a value")
            value, i = args[i + 1], i + 1
        i += 1
        if is_config:
            configs.append(value)
        else:
            dotted[flag.removeprefix("--data.")] = _yaml_value(value)
    return configs, dotted, rest


def _stage(argv: Sequence[str]) -> str:
    given = _flag_value(argv, "--stage")
    stage = DEFAULT_STAGE if given is None else given
    if stage not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    return stage


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _read(path: str) -> dict[str, Any]:
    content = load_config(path)
    if content is None:  # not a file: inline YAML, as jsonargparse reads it
        content = _yaml_value(path)
        if not isinstance(content, dict):
            raise ConfigError(f"--config {path}: no such file; give the path of a YAML config (a fit config)")
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys (data:, model:, ...), not {content!r}")
    return content


def _section(value: Any, path: str) -> dict[str, Any]:
    """A ``data:`` section, flat or in ``class_path``/``init_args`` form."""
    if value is None:
        return {}
    if isinstance(value, dict) and "init_args" in value:
        value = value["init_args"]
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: data: must be a mapping of data keys (data.local_collections, ...)")
    return value


def _check_data_key(name: str, valid: Sequence[str], where: str) -> None:
    if name in valid:
        return
    close = suggest_key(name, valid)
    hint = f": did you mean 'data.{close}'?" if close else ""
    raise ConfigError(
        f"{where}: unknown data key 'data.{name}'{hint} (a fit config's data: keys are RerankDataModule's "
        "arguments; `lightning-rank fit --help` lists them)"
    )
