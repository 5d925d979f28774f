"""Shared pieces of the CLI verbs: argument parsing with suggestions, config files, output dirs."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import torch
from pydantic import BaseModel, create_model

from calm_core import recipes
from calm_core.config import (
    ConfigError,
    ConfigModel,
    load_config_file,
    merge_overrides,
    validate_config,
)
from calm_core.data.dataset import PackedDataset
from calm_core.data.packing import DataError
from calm_core.data.tokenizer import TokenizerError
from calm_core.model_dir import ModelLoadError
from calm_core.recipes import OutputDirError, Recipe
from calm_core.recipes.config import TrainerOptions
from calm_core.recipes.final_save import NonFiniteModelError
from calm_core.registry import PluginConflictError, UnknownComponentError
from calm_core.runlock import RunLockError, run_lock
from calm_core.runtime import resolve_device
from calm_core.training.checkpoint import CheckpointError, CheckpointWriteError
from calm_core.training.errors import NonFiniteLossError
from calm_core.training.trainer import StepCallback
from calm_core.validation import check_threads

__all__ = [
    "CLIError",
    "CalmArgumentParser",
    "add_device_argument",
    "add_model_argument",
    "add_split_arguments",
    "add_training_arguments",
    "check_input_path",
    "load_split",
    "open_loggers_arg",
    "prepare_output_dir",
    "print_json",
    "print_resolved_config",
    "resolve_config",
    "resolve_model_arg",
    "resolved_device",
    "run_training",
    "set_threads",
    "training_options",
    "usage_errors",
]

M = TypeVar("M", bound=BaseModel)


class CLIError(Exception):
    """A usage or input problem reported as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class CalmArgumentParser(argparse.ArgumentParser):
    """argparse with "did you mean" suggestions for unknown verbs and flags."""

    def error(self, message: str) -> NoReturn:
        hint = ""
        if "invalid choice:" in message:
            bad = message.split("invalid choice:", 1)[1].split("(", 1)[0].strip().strip("'\"")
            choices = self._choices()
            close = difflib.get_close_matches(bad, choices, n=3, cutoff=0.5)
            if close:
                hint = f"\ndid you mean: {', '.join(close)}?"
        elif message.startswith("unrecognized arguments:"):
            opts = [o for a in self._actions for o in a.option_strings]
            bads = [w for w in message.split(":", 1)[1].split() if w.startswith("-")]
            sugg = []
            for bad in bads:
                close = difflib.get_close_matches(bad.split("=")[0], opts, n=2, cutoff=0.5)
                if close:
                    sugg.append(f"{bad} -> {' or '.join(close)}")
            if sugg:
                hint = "\ndid you mean: " + "; ".join(sugg)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")

    def verb_parsers(self) -> dict[str, argparse.ArgumentParser]:
        """The sub-parsers by verb name (empty for a parser without verbs)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    def _choices(self) -> list[str]:
        return list(self.verb_parsers())


def resolve_config(
    model: type[M],
    config_file: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    base: Mapping[str, Any] | None = None,
) -> M:
    """Defaults <- ``base`` <- config file <- flag overrides, validated into ``model``."""
    data: dict[str, Any] = dict(base or {})
    if config_file is not None:
        try:
            data = merge_overrides(data, load_config_file(config_file))
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
    data = merge_overrides(data, dict(overrides or {}))
    try:
        return validate_config(model, data)
    except ConfigError as exc:
        where = f" (from {config_file} and flags)" if config_file else ""
        raise CLIError(f"{exc}{where}") from None


def print_resolved_config(
    title: str, config: BaseModel | Mapping[str, Any], device: torch.device | None = None
) -> None:
    """Print the config a verb will run with, and the device it resolved to, to stderr
    (stdout stays clean for --json)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    print(f"{title}:\n{json.dumps(data, indent=2)}", file=sys.stderr)
    if device is not None:
        print(f"device: {device}", file=sys.stderr)


def print_json(obj: Any) -> None:
    """Print ``obj`` as one line of JSON on stdout (what ``--json`` promises): strict JSON, so
    a NaN or infinite float (e.g. the loss of a run that did no step) is written as null."""
    print(json.dumps(_strict(obj), indent=None, sort_keys=True, default=str, allow_nan=False))


def _strict(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    return obj


def check_same_tokenizer(model_dir: str | Path, data_dir: str | Path, what: str) -> None:
    """:func:`calm_core.recipes.check_same_tokenizer`, refusals as usage errors."""
    with usage_errors():
        recipes.check_same_tokenizer(model_dir, data_dir, what)


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Turn the library's input errors (config, device, data, model directories, output
    directories, checkpoints of another run) into one-line usage errors."""
    try:
        yield
    except CheckpointWriteError as exc:  # disk full, permissions: the message says what to do
        raise CLIError(str(exc)) from None
    except CheckpointError as exc:  # --resume into a run made with other settings
        raise CLIError(f"{exc}; drop --resume, or pass --overwrite to start over") from None
    except (
        ConfigError,  # also a bad value from a config file
        DataError,  # e.g. a validation split shorter than one block
        TokenizerError,
        ModelLoadError,
        OutputDirError,
        UnknownComponentError,
        PluginConflictError,
        RunLockError,  # issue 23: another run holds the output directory
        NonFiniteLossError,  # issue 23: a diverged run (the message says what to change)
        NonFiniteModelError,
    ) as exc:
        raise CLIError(str(exc)) from None


def resolved_device(spec: str | None) -> torch.device:
    """``--device`` as a ``torch.device`` that exists here (a usage error when it does not)."""
    with usage_errors():
        return resolve_device(spec or "auto")


def add_device_argument(parser: argparse.ArgumentParser, *, default: str | None = "auto") -> None:
    """``--device {auto,cpu,cuda,cuda:N,mps}`` (see :func:`calm_core.runtime.resolve_device`)."""
    parser.add_argument(
        "--device",
        default=default,
        metavar="DEVICE",
        help="auto (default: the local rank's GPU under torchrun, else cuda:0, else mps, else "
        "cpu), cpu, cuda, cuda:N or mps",
    )


def add_model_argument(parser: argparse.ArgumentParser, dest: str, help: str) -> None:
    """The positional model directory (or Hub id) ``dest`` and ``--revision`` for a Hub id."""
    parser.add_argument(dest, metavar="MODEL_DIR", help=help)
    parser.add_argument(
        "--revision", metavar="REV", help="Hub id only: branch, tag or commit (default: main)"
    )


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data DATA_DIR`` (required) and ``--split`` (default val): the packed split to score."""
    parser.add_argument("--data", required=True, metavar="DATA_DIR", help="packed data directory")
    parser.add_argument("--split", default="val", help="split to score (default: val)")


def load_split(args: argparse.Namespace) -> PackedDataset:
    """The split ``--split`` of ``--data``; a data problem is a :class:`CLIError`."""
    try:
        return PackedDataset(args.data, args.split)
    except DataError as exc:
        raise CLIError(str(exc)) from None


def set_threads(threads: int | None) -> None:
    """Check ``--threads`` (issue 23: bounded, before any work) and apply it when given."""
    with usage_errors():
        check_threads(threads, "--threads")
    if threads is not None:
        torch.set_num_threads(threads)


def check_input_path(path: str | Path, what: str) -> Path:
    """``path`` as a Path; a :class:`CLIError` naming ``what`` if it does not exist."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{what} {p} does not exist")
    return p


def resolve_model_arg(ref: str | Path, what: str, *, revision: str | None = None) -> Path:
    """A model directory named on the command line: a local directory, or a Hugging Face Hub id
    (``org/name``, fetched into or read from the Hugging Face cache); a :class:`CLIError` naming
    ``what`` when it is neither."""
    from calm_core.hub import HubError, resolve_model_dir

    try:
        path = resolve_model_dir(ref, revision=revision)
    except HubError as exc:
        raise CLIError(str(exc)) from None
    return check_input_path(path, what)


def prepare_output_dir(
    path: str | Path, *, overwrite: bool, resume: bool = False, resumable: bool = False
) -> Path:
    """:func:`calm_core.recipes.prepare_output_dir`, refusals as usage errors."""
    with usage_errors():
        return recipes.prepare_output_dir(
            path, overwrite=overwrite, resume=resume, resumable=resumable
        )


def options_model(parser: argparse.ArgumentParser) -> type[BaseModel]:
    """A pydantic model of a verb's optional flags, so a config file can set them (validated)."""
    fields: dict[str, Any] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "config", "json"):
            continue
        typ: Any
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            typ = bool
        else:
            typ = action.type if action.type in (int, float, str) else str
            if action.choices:
                typ = Literal[tuple(action.choices)]
            if action.nargs in ("+", "*"):
                typ = list[typ]  # type: ignore[valid-type]
        fields[action.dest] = (typ | None, None)
    name = "".join(w.capitalize() for w in parser.prog.replace("-", " ").split()) + "Options"
    return create_model(name, __base__=ConfigModel, **fields)


def apply_options_file(parser: argparse.ArgumentParser, config_file: str) -> dict[str, Any]:
    """Make a config file's values the defaults of ``parser``'s flags (flags still override).

    Keys are flag names with dashes or underscores (``max-new-tokens`` / ``max_new_tokens``).
    """
    try:
        raw = load_config_file(config_file)
        data = {str(k).replace("-", "_"): v for k, v in raw.items()}
        values = validate_config(options_model(parser), data).model_dump(exclude_unset=True)
    except ConfigError as exc:
        raise CLIError(f"{exc} (in {config_file})") from None
    parser.set_defaults(**values)
    for action in parser._actions:
        if action.dest in values and action.required:
            action.required = False  # the file supplies it
    return values


def add_training_arguments(parser: argparse.ArgumentParser, *, steps_help: str) -> None:
    """The trainer flags shared by ``calm train`` and ``calm train-codec``."""
    parser.add_argument("--steps", type=int, help=steps_help)
    parser.add_argument("--batch-size", type=int, help="sequences per step")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (multiple of K)")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (0: at end)")
    parser.add_argument("--seed", type=int, help="training seed")
    parser.add_argument("--threads", type=int, help="torch threads for this process")
    add_device_argument(parser, default=None)  # None: the config's train.device (auto)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument(
        "--logger",
        action="append",
        metavar="NAME",
        help="experiment tracker, repeatable: jsonl (metrics.jsonl, always on), tensorboard, "
        "wandb, mlflow (each an extra: pip install 'calm-core[NAME]')",
    )


def open_loggers_arg(names: list[str] | None, out: Path, config: BaseModel) -> Any:
    """The ``--logger`` trackers as a :class:`~calm_core.training.loggers.LoggerGroup` (a
    ``with`` block yields the callbacks); an unknown name or a missing extra is a CLIError."""
    from calm_core.training.loggers import LoggerNotInstalledError, open_loggers

    try:
        return open_loggers(
            names or [], run_name=out.resolve().name, config=config.model_dump(mode="json")
        )
    except (ValueError, LoggerNotInstalledError) as exc:
        raise CLIError(str(exc)) from None


def training_options(args: argparse.Namespace) -> TrainerOptions:
    """The trainer flags as keyword options of the recipes' config resolution."""
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be positive, got {args.steps}")
    return {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "eval_every": args.eval_every,
        "seed": args.seed,
        "threads": args.threads,
        "device": args.device,
    }


def run_training(
    args: argparse.Namespace,
    config: BaseModel,
    device: torch.device,
    verb: str,
    make_recipe: Callable[[Path, Sequence[StepCallback]], Recipe[Any]],
    wrote: str,
) -> int:
    """The rest of ``calm train`` / ``calm train-codec`` once ``config`` is resolved: print it,
    open the ``--logger`` trackers, take ``--out`` and run the recipe ``make_recipe(out,
    callbacks)`` in it; rank 0 reports ``wrote {wrote} to {out}`` (and ``--json``)."""
    print_resolved_config(f"{verb} config", config, device)
    loggers = open_loggers_arg(args.logger, Path(args.out), config)  # a missing extra: now
    with usage_errors(), run_lock(args.out):  # issue 23: one run per --out, before any write
        out = prepare_output_dir(
            args.out, overwrite=args.overwrite, resume=args.resume, resumable=True
        )
        with loggers as callbacks:
            result = make_recipe(out, callbacks).run()
    if result.get("rank", 0):  # a non-main torchrun rank: rank 0 writes and reports
        return 0
    print(f"wrote {wrote} to {out}", file=sys.stderr)
    if args.json:
        print_json(result)
    return 0
