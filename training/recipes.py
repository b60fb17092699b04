"""Training recipes as TOML files: ``configs/shipped.toml``, ``configs/paper.toml``, ``configs/erm.toml``.

    python -m training.train --config configs/shipped.toml --data amibr=../shared/data/ami-br \\
        --cv-fold 0 --seed 0 --out runs/shipped-s0
    python -m training.train --config shipped ...          # a name: configs/NAME.toml

A recipe's keys are the argparse destinations of ``training.train`` (``light_aug_epochs``,
``no_mixstyle``, ...): the file replaces the parser's defaults and flags given on the command line
still override it (timm's pattern: parse ``--config`` first, ``parser.set_defaults(**recipe)``,
then parse the command line). A key that is not an option, or a value of the wrong type or not
among the option's choices, is an error naming the file and the key. TOML has no null: an option
whose default is none (``--split-file``, ``--pretrained``, ...) is left out to keep it unset.
Paths in a recipe are read from the working directory, as on the command line.

An optional ``[export]`` table holds ``training.export`` options (``half``, ``tta``,
``threshold_rule``, ``which``): ``training.export --config RECIPE`` and ``lab.born_again
--recipe RECIPE`` use them.

Every run writes ``OUT/config.json`` (``run_config``): the recipe (path, SHA-256, its settings),
the command-line overrides and the resolved arguments; ``training.export`` copies it into the
model card under ``training.recipe``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tomllib
from pathlib import Path

from .provenance import file_sha256

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "configs"
EXPORT_TABLE = "export"
# training.export options a recipe's [export] table may set (the rest are run-specific).
EXPORT_KEYS = ("half", "tta", "threshold_rule", "which")


def available() -> list[str]:
    """The names of the recipes in ``configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def recipe_path(spec: str | Path) -> Path:
    """A recipe file: a path to a TOML file, or the name of one in ``configs/`` (``shipped``)."""
    path = Path(spec)
    if path.is_file():
        return path
    named = CONFIG_DIR / f"{spec}.toml"
    if path.suffix == "" and len(path.parts) == 1 and named.is_file():
        return named
    raise SystemExit(f"--config {spec}: no such file, nor a recipe name in {CONFIG_DIR} "
                     f"({', '.join(available()) or 'none'})")


def read_recipe(spec: str | Path) -> dict:
    """The TOML file as written (the ``[export]`` table included), unchecked."""
    path = recipe_path(spec)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"{path}: not a valid TOML file ({exc})") from None


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's optional arguments by destination; the first action of a destination (``--no-kd``,
    not its negation ``--kd``) is the one whose default and type count."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            found.setdefault(action.dest, action)
    return found


def _convert(where: str, action: argparse.Action, value):
    """A TOML value as the option would hold it after parsing, or SystemExit naming ``where``."""
    def fail(expected: str):
        raise SystemExit(f"{where} = {value!r}: expected {expected} ({'/'.join(action.option_strings)})")

    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if action.nargs in ("+", "*"):
        if not isinstance(value, list) or (action.nargs == "+" and not value):
            fail("a list")
        return [_scalar(where, action, v, fail) for v in value]
    return _scalar(where, action, value, fail)


def _scalar(where: str, action: argparse.Action, value, fail):
    if isinstance(value, (bool, list, dict)):
        fail("a single number or string")
    kind = action.type
    if kind is float and isinstance(value, (int, float)):
        value = float(value)
    elif kind is int and not isinstance(value, int):
        fail("an integer")
    elif kind is float:
        fail("a number")
    elif kind not in (int, float):
        if not isinstance(value, str):
            fail("a string")
        value = kind(value) if callable(kind) else value
    if action.choices is not None and value not in action.choices:
        fail(f"one of {', '.join(map(str, action.choices))}")
    return value


def check_settings(parser: argparse.ArgumentParser, settings: dict, where: str,
                   allowed: tuple[str, ...] | None = None) -> dict:
    """``settings`` checked and converted against ``parser``'s options: an unknown key (or one outside
    ``allowed``) is an error naming ``where`` and the key."""
    known = options(parser)
    converted = {}
    for key, value in settings.items():
        if key == "config":
            raise SystemExit(f"{where}: 'config': a recipe cannot name another recipe")
        if key not in known or (allowed is not None and key not in allowed):
            names = sorted(allowed if allowed is not None else set(known) - {"config"})
            raise SystemExit(f"{where}: unknown key {key!r} (known: {', '.join(names)})")
        converted[key] = _convert(f"{where}: {key}", known[key], value)
    return converted


def training_settings(parser: argparse.ArgumentParser, spec: str | Path) -> dict:
    """A recipe's training settings (every key but the ``[export]`` table), checked against ``parser``."""
    settings = dict(read_recipe(spec))
    export = settings.pop(EXPORT_TABLE, {})
    if not isinstance(export, dict):
        raise SystemExit(f"{recipe_path(spec)}: {EXPORT_TABLE!r} must be a table ([{EXPORT_TABLE}])")
    return check_settings(parser, settings, str(recipe_path(spec)))


def export_settings(parser: argparse.ArgumentParser, spec: str | Path) -> dict:
    """A recipe's ``[export]`` table, checked against ``training.export``'s parser ({} when it has none)."""
    table = read_recipe(spec).get(EXPORT_TABLE, {})
    if not isinstance(table, dict):
        raise SystemExit(f"{recipe_path(spec)}: {EXPORT_TABLE!r} must be a table ([{EXPORT_TABLE}])")
    return check_settings(parser, table, f"{recipe_path(spec)} [{EXPORT_TABLE}]", EXPORT_KEYS)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None, *,
               table: str | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``--config RECIPE`` first: the recipe's settings (or its ``[table]``) become
    ``parser``'s defaults, then the whole command line is parsed, so its flags override the recipe.

    The first pass is the parser itself (same abbreviations and errors), without ``-h``, so ``--help``
    shows the recipe's values as the defaults."""
    argv = sys.argv[1:] if argv is None else list(argv)
    first, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    if getattr(first, "config", None):
        settings = (training_settings(parser, first.config) if table is None
                    else export_settings(parser, first.config))
        parser.set_defaults(**settings)
    return parser.parse_args(argv)



def _plain(value):
    return str(value) if isinstance(value, Path) else value


def run_config(args: argparse.Namespace, parser: argparse.ArgumentParser, implied=None) -> dict:
    """What ``OUT/config.json`` records: the recipe (as given, its file's SHA-256 and settings), the
    arguments that differ from it (the command-line overrides), and every resolved argument.

    ``implied(namespace)`` resolves defaults that depend on other arguments (``--early-stop``), applied
    to the recipe's defaults too, so an implied value is not reported as an override."""
    resolved = {k: _plain(v) for k, v in vars(args).items()}
    config = resolved.get("config")
    defaults = argparse.Namespace(**{dest: action.default for dest, action in options(parser).items()})
    record = {"config": config, "name": None, "sha256": None, "settings": {}}
    if config:
        path = recipe_path(config)
        record.update(name=path.stem, sha256=file_sha256(path), settings=read_recipe(path))
        for key, value in training_settings(parser, path).items():
            setattr(defaults, key, value)
    if implied is not None:
        implied(defaults)
    base = {k: _plain(v) for k, v in vars(defaults).items()}
    record["overrides"] = {k: v for k, v in resolved.items() if k != "config" and k in base and v != base[k]}
    record["args"] = resolved
    return record


def command(record: dict, parser: argparse.ArgumentParser, module: str = "training.train") -> str:
    """``python -m MODULE --config RECIPE OVERRIDES`` for a ``run_config`` record: the run's command
    written against its recipe (flags for the overrides only)."""
    argv = ["--config", record["config"]] if record.get("config") else []
    argv += flags_for(record["overrides"], parser, defaults={})
    return f"python -m {module} " + shlex.join(argv) if argv else f"python -m {module}"


def flags_for(settings: dict, parser: argparse.ArgumentParser, defaults: dict | None = None) -> list[str]:
    """Command-line flags that set ``settings`` under ``parser``; values equal to ``defaults`` (default:
    the parser's) are left out, and so are unset (none) values."""
    known = options(parser)
    negations = {a.dest: a.option_strings[0] for a in parser._actions
                 if isinstance(a, argparse._StoreFalseAction) and a.option_strings}
    argv = []
    for key, value in settings.items():
        action = known.get(key)
        if action is None or value is None:
            continue
        default = action.default if defaults is None else defaults.get(key, _MISSING)
        if value == _plain(default):
            continue
        flag = action.option_strings[0]
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif key in negations:
                argv.append(negations[key])
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


_MISSING = object()


def matching(train_args: dict, parser: argparse.ArgumentParser) -> list[str]:
    """The recipes in ``configs/`` whose every training setting ``train_args`` (a run's resolved
    arguments, e.g. from its checkpoint) holds: which recipe an older run, trained from flags, was."""
    names = []
    for name in available():
        settings = training_settings(parser, CONFIG_DIR / f"{name}.toml")
        if all(_plain(train_args.get(k, _MISSING)) == _plain(v) for k, v in settings.items()):
            names.append(name)
    return names
