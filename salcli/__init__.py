"""salcli: explain what image classifiers look at.

The command line is ``salcli``; the Python API is ``salcli.Explainer`` (configured once, called on batches),
``salcli.explain`` (one call), both on the engine the CLI runs, and ``salcli.BatchExplainer`` (the CLI's settings
and decoding around that engine, for Ray Data's ``map_batches`` and Spark's ``predict_batch_udf``). They are
imported lazily, so that importing the package, and ``salcli --help``, do not import torch.
"""

__version__ = "0.1.0"

__all__ = ["BatchExplainer", "Explainer", "__version__", "explain"]


def __getattr__(name: str):
    if name == "explain":
        from .api import explain

        return explain
    if name == "Explainer":
        from .engine import Explainer

        return Explainer
    if name == "BatchExplainer":
        from .batch import BatchExplainer

        return BatchExplainer
    raise AttributeError(f"module 'salcli' has no attribute {name!r}")
