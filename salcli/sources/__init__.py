"""Model sources: where the model of ``--model SPEC`` comes from. One small registered class per module.

A source says whether a spec is its own (``claims``), builds the model (``build``) and knows the model's own
preprocessing and class names (``preset``). ``find`` asks the sources in ``order``, lowest first. Adding a
source is one new file in this package: its modules are discovered at import, there is no list to edit.

Nothing here imports torch at module level (``salcli --help`` stays fast): sources import it inside methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ModelLoadError, UsageError, setting, word
from ..registry import Registry, discover

if TYPE_CHECKING:
    from ..models import LoadedModel

# A saved whole module, TorchScript or pickled, has one of these suffixes (state dicts go to --weights).
MODULE_SUFFIXES = (".pt", ".pth", ".ts")


class Source:
    """One way of getting a model from a spec.

    A subclass sets ``forms`` (the spec forms it takes, as the user types them), ``summary`` (one line: what
    they give) and ``order`` (lower is asked first); ``register`` sets ``name`` and ``help``, the line
    "`FORM` or `FORM`: summary" that the README, ``--help`` and error messages show.
    """

    name: ClassVar[str] = ""
    forms: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    help: ClassVar[str] = ""
    order: ClassVar[int] = 100

    def claims(self, spec: str) -> bool:
        """Whether ``spec`` is a form of this source (checked in ``order``; the first claim wins)."""
        raise NotImplementedError

    def build(self, spec: str, weights: str | None, trust: bool) -> LoadedModel:
        """The model (any mode, parameters as built); ``trust`` allows files that run pickled code."""
        raise NotImplementedError

    def preset(self, spec: str) -> tuple[dict[str, Any], tuple[str, ...] | None]:
        """The model's own preprocessing (resize/crop/mean/std/channels/interpolation) and class names."""
        return {}, None

    def loads_own_weights(self, weights: str | None) -> bool:
        """True when ``build`` already loaded ``weights`` (torchvision's ``DEFAULT``), so nothing is read after."""
        return False


REGISTRY: Registry = Registry("model source")


def _either(items: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return " or ".join(filter(None, [", ".join(items[:-1]), items[-1]]))


def register(name: str):
    """Class decorator: ``@register("torchvision")``; a duplicate name is an error."""

    def check(name: str, cls: type[Source]) -> None:
        if not cls.forms:
            raise ValueError(f"model source '{name}' declares no spec forms ({cls.__name__}.forms)")
        cls.help = f"{_either([f'`{form}`' for form in cls.forms])}: {cls.summary}"

    return REGISTRY.register(name, check)


def ordered() -> list[Source]:
    """One instance of every source, in the order they are asked."""
    return [cls() for cls in sorted(REGISTRY.values(), key=lambda cls: cls.order)]


def lookup(spec: str) -> Source | None:
    """The first source, in ``order``, that claims ``spec``; None when none does."""
    return next((source for source in ordered() if source.claims(spec)), None)


def find(spec: str) -> Source:
    """The source of ``spec``; a spec no source claims is a usage error that lists every form."""
    source = lookup(spec)
    if source is None:
        kind = content(spec)
        if kind == "safetensors":
            raise ModelLoadError(f"{setting('model')} {spec} holds weights (safetensors), not a model: give the "
                                 f"architecture with {setting('model')} (torchvision:NAME, timm:NAME or FILE.py:FUNC) "
                                 f"and this file with {setting('weights')}")
        from ..checkpoint import KINDS

        if kind is not None:
            missing = f" (its content: {KINDS[kind]})"
        else:
            missing = "" if Path(spec).expanduser().exists() else " (no such file)"
        forms = "; ".join(other.help.replace("`", "") for other in ordered())
        raise UsageError(f"{setting('model')} {spec}: not a model salcli can load{missing}. It takes: {forms}")
    return source


def describe() -> list[dict[str, Any]]:
    """One entry per source, in ``order``, worded for the command line: for ``--help`` and the README."""
    return [{"name": s.name, "forms": list(s.forms), "help": word(s.help, {})} for s in ordered()]


def content(spec: str) -> str | None:
    """The kind of checkpoint the file ``spec`` holds (``salcli.checkpoint.sniff``); None when it is not a file."""
    path = Path(spec).expanduser()
    if not path.is_file():  # only regular files are opened: a FIFO or a device would block
        return None
    from ..checkpoint import sniff

    return sniff(path)


def existing_file(path_text: str, name: str) -> Path:
    """The file the user gave as setting ``name``; a missing one is a load error."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{setting(name)} {path_text}: no such file")
    return path


discover(__name__, __path__)
