"""pyroopt: a drop-in, faster and safer replacement for ``pyro.optim``.

Replace ``import pyro.optim as optim`` by ``import pyroopt as optim``: the same
optimizers, arguments, state files and numbers, with all parameters stepped together.
Every name of ``pyro.optim`` is here, and each object passes the ``isinstance`` checks
that pyro's passes (a scheduler is a :class:`pyro.optim.PyroLRScheduler`, the Horovod
wrapper a :class:`pyro.optim.HorovodOptimizer`, and both are :class:`PyroOptim`).
"""

from pyroopt import distributed, factories, optimizers
from pyroopt._version import __version__
from pyroopt.distributed import DistributedOptimizer, HorovodOptimizer
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
    ChainedScheduler,
    ClippedAdam,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    DCTAdam,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    MultiplicativeLR,
    MultiStepLR,
    Muon,
    NAdam,
    OneCycleLR,
    PolynomialLR,
    RAdam,
    ReduceLROnPlateau,
    RMSprop,
    Rprop,
    SequentialLR,
    SparseAdam,
    StepLR,
    _LRScheduler,
)
from pyroopt.lr_scheduler import PyroLRScheduler, is_scheduler
from pyroopt.multi import (
    MixedMultiOptimizer,
    MultiOptimizer,
    Newton,
    PyroMultiOptimizer,
    TorchMultiOptimizer,
    newton_step,
)
from pyroopt.optim import PyroOptim

# pyro.optim's submodules under the names pyro.optim gives them, as pyroopt's modules
# that hold the same things (lr_scheduler, multi and optim have pyro's names already):
# pyro's clipped_adam, adagrad_rmsprop and dct_adam each hold one torch optimizer class
clipped_adam = adagrad_rmsprop = dct_adam = optimizers
pytorch_optimizers = factories
horovod = distributed.horovod

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
    "ChainedScheduler",
    "ClippedAdam",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "DCTAdam",
    "DistributedOptimizer",
    "ExponentialLR",
    "HorovodOptimizer",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MixedMultiOptimizer",
    "MultiOptimizer",
    "MultiStepLR",
    "MultiplicativeLR",
    "Muon",
    "NAdam",
    "Newton",
    "OneCycleLR",
    "PolynomialLR",
    "PyroLRScheduler",
    "PyroMultiOptimizer",
    "PyroOptim",
    "RAdam",
    "RMSprop",
    "ReduceLROnPlateau",
    "Rprop",
    "SequentialLR",
    "SparseAdam",
    "StepLR",
    "TorchMultiOptimizer",
    "_LRScheduler",
    "__version__",
    "is_scheduler",
    "newton_step",
]

#: the factories made for torch.optim's classes, as ``pyro.optim.pytorch_optims`` lists them
pytorch_optims: list[str] = [
    "Adafactor",
    "Muon",
    "Adadelta",
    "Adagrad",
    "Adam",
    "Adamax",
    "AdamW",
    "ASGD",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
    "SparseAdam",
    "LRScheduler",
    "_LRScheduler",
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "SequentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
    "CyclicLR",
    "CosineAnnealingWarmRestarts",
    "OneCycleLR",
]
