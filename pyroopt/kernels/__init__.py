"""Update rules that pyroopt owns, each written once over tensor lists or flat buffers."""

from pyroopt.kernels.adagrad import ADAGRAD
from pyroopt.kernels.adam import ADAM, ADAMW
from pyroopt.kernels.base import IMPLEMENTATION_ARGS, UpdateRule

__all__ = ["ADAGRAD", "ADAM", "ADAMW", "IMPLEMENTATION_ARGS", "UpdateRule"]
