"""pyroopt: a drop-in, faster and safer replacement for ``pyro.optim``.

Replace ``import pyro.optim as optim`` by ``import pyroopt as optim``: the same
optimizers, arguments, state files and numbers, with all parameters stepped together.
"""

from pyroopt._version import __version__
from pyroopt.factories import (
    ASGD,
    SGD,
    Adadelta,
    Adafactor,
    Adagrad,
    AdagradRMSProp,
    Adam,
    Adamax,
    AdamW,
    ClippedAdam,
    DCTAdam,
    Muon,
    NAdam,
    RAdam,
    RMSprop,
    Rprop,
    SparseAdam,
)
from pyroopt.optim import PyroOptim, is_scheduler

__all__ = [
    "ASGD",
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "AdagradRMSProp",
    "Adam",
    "AdamW",
    "Adamax",
    "ClippedAdam",
    "DCTAdam",
    "Muon",
    "NAdam",
    "PyroOptim",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SparseAdam",
    "__version__",
    "is_scheduler",
]
