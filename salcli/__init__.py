"""salcli: explain what image classifiers look at.

The command line is ``salcli``; the Python API is ``salcli.Explainer`` (configured once, called on batches) and
``salcli.explain`` (one call), both on the engine the CLI runs. They are imported lazily, so that importing the
package, and ``salcli --help``, do not import torch.
"""

__version__ = "0.1.0"

__all__ = ["Explainer", "__version__", "explain"]


def __getattr__(name: str):
    if name == "explain":
        from .api import explain

        return explain
    if name == "Explainer":
        from .engine import Explainer

        return Explainer
    raise AttributeError(f"module 'salcli' has no attribute {name!r}")
