"""Domain errors. Only ``cli.py`` turns them into exit codes and messages.

Library code names a setting in a message with ``setting("layer")``, never with a command-line flag: the
message then reads ``layer=`` when a Python caller sees it (``str(exc)``) and ``--layer`` when ``cli.py`` words
it (``exc.render(flags)``), so the same check serves both without the library knowing the command line.
"""

from __future__ import annotations

import difflib
import re

_MARK = "\x1f"  # unit separator: never typed in a path, a class name or a layer name
_SETTING = re.compile(f"{_MARK}([a-z_]+){_MARK}")


def setting(name: str) -> str:
    """A reference to the setting ``name`` inside an error message (see the module docstring)."""
    return f"{_MARK}{name}{_MARK}"


def word(message: str, flags: dict[str, str] | None = None) -> str:
    """The message with its settings spelled as flags (``flags`` maps a setting to its flag; a setting not in it
    becomes ``--name-with-dashes``), or as Python keywords (``name=``) when ``flags`` is None."""
    if flags is None:
        return _SETTING.sub(lambda m: f"{m.group(1)}=", message)
    return _SETTING.sub(lambda m: flags.get(m.group(1), "--" + m.group(1).replace("_", "-")), message)


class SalcliError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __str__(self) -> str:
        return word(super().__str__())

    def render(self, flags: dict[str, str]) -> str:
        """The message as the command line words it."""
        return word(super().__str__(), flags)


class UsageError(SalcliError):
    """Bad options or configuration; nothing was run (exit 2)."""

    exit_code = 2


class ModelLoadError(SalcliError):
    """The model or its weights could not be loaded, or need ``--trust-checkpoint`` (exit 3)."""

    exit_code = 3


class GateFailure(SalcliError):
    """A quality gate failed (exit 4)."""

    exit_code = 4


def did_you_mean(word_: str, choices) -> str:
    """' Did you mean 'x'?' when a close match exists, else ''."""
    close = difflib.get_close_matches(word_, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
