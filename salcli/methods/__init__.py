"""Attribution methods. Importing this package registers every method (one module per family)."""

from . import gradient  # noqa: F401  (registers methods)
from . import smooth  # noqa: F401
from . import integrated  # noqa: F401
from . import cam  # noqa: F401
from . import perturbation  # noqa: F401
from .base import Context, Method, image_seed
from .registry import ALIASES, REGISTRY, aliases, canonical, create, describe, get, name_key, names, register

__all__ = ["ALIASES", "Context", "Method", "REGISTRY", "aliases", "canonical", "create", "describe", "get", "image_seed",
           "name_key", "names", "register"]
