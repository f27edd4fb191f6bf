"""Domain errors. Only ``cli.py`` turns them into exit codes and messages."""

from __future__ import annotations

import difflib


class SalcliError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(SalcliError):
    """Bad options or configuration; nothing was run (exit 2)."""

    exit_code = 2


class ModelLoadError(SalcliError):
    """The model or its weights could not be loaded, or need ``--trust-checkpoint`` (exit 3)."""

    exit_code = 3


class GateFailure(SalcliError):
    """A quality gate failed (exit 4)."""

    exit_code = 4


def did_you_mean(word: str, choices) -> str:
    """' Did you mean 'x'?' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
