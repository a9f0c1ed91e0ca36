"""Command-line flags for the training settings, built from `TrainSettings`' field metadata, so that a
flag's default, bounds and help are the very ones the Fine-tune form and the trainer use.

`--batch-size` for `batch_size`, and so on; `--time-budget` stays in minutes as it always was. An
optional setting (empty has a meaning, e.g. "never stop early") is emptied with `none` or 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from core.training.config import TrainSettings, fields, value_type

EMPTY = "none"  # what an optional setting's flag is given to leave the setting empty


# A flag whose name or unit differs from its setting's: (flag, setting units per flag unit, help).
_RENAMED = {
    "time_budget_s": (
        "--time-budget",
        60.0,
        "Minutes: no epoch is started that would end past them. Empty: no budget.",
    ),
}


def flag_of(name: str) -> str:
    return _RENAMED[name][0] if name in _RENAMED else "--" + name.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `TrainSettings` field; a flag not given leaves the setting at its default."""
    group = parser.add_argument_group("training settings (defaults and bounds as on the Fine-tune form)")
    for spec in fields():
        setting = spec.metadata["setting"]
        kind = value_type(spec.name)
        help_text = _RENAMED[spec.name][2] if spec.name in _RENAMED else setting.help
        scale = _RENAMED[spec.name][1] if spec.name in _RENAMED else 1.0
        if kind is bool:
            help_text = _escape(f"{help_text} (default: {_text(spec.default)})")
            group.add_argument(flag_of(spec.name), dest=spec.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)  # fmt: skip
            continue
        if kind is str:
            group.add_argument(flag_of(spec.name), dest=spec.name, choices=setting.choices, default=None,
                               help=_escape(f"{help_text} (default: {spec.default})"))  # fmt: skip
            continue
        notes = [_bounds(setting.minimum, setting.maximum, scale), f"default: {_text(spec.default, scale)}"]
        if setting.optional:
            notes.append(f"{EMPTY} or 0: empty")
        group.add_argument(flag_of(spec.name), dest=spec.name, type=_parser(kind, setting.optional),
                           default=None, metavar=kind.__name__.upper(),
                           help=_escape(f"{help_text} ({'; '.join(n for n in notes if n)})"))  # fmt: skip


def settings_from_flags(args: argparse.Namespace) -> TrainSettings:
    """The settings the flags ask for (defaults for those not given); out of bounds: `SettingsError`."""
    values: dict[str, Any] = {}
    for spec in fields():
        value = getattr(args, spec.name, None)
        if value is None:
            continue
        if value == EMPTY:
            values[spec.name] = None
        elif spec.name in _RENAMED:
            values[spec.name] = value * _RENAMED[spec.name][1]
        else:
            values[spec.name] = value
    return TrainSettings.from_dict(values)


def _parser(kind: type, optional: bool):
    def parse(text: str) -> Any:
        if optional and text.strip().lower() in ("", EMPTY):
            return EMPTY
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        # 0 is below every optional setting's minimum: it has always meant "off" (--patience 0).
        return EMPTY if optional and value == 0 else value

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _bounds(minimum: float | None, maximum: float | None, scale: float) -> str:
    low = None if minimum is None else minimum / scale
    high = None if maximum is None else maximum / scale
    if low is not None and high is not None:
        return f"{low:g} to {high:g}"
    if low is not None:
        return f"at least {low:g}"
    return "" if high is None else f"at most {high:g}"


def _text(default: Any, scale: float = 1.0) -> str:
    if default is None:
        return "empty"
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"{default / scale:g}"


def _escape(text: str) -> str:
    return text.replace("%", "%%")
