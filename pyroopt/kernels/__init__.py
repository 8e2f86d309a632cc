"""Update rules that pyroopt owns, each written once over tensor lists or flat buffers."""

from __future__ import annotations

from torch.optim import Optimizer

from pyroopt.kernels.adam import ADAM, ADAMW
from pyroopt.kernels.base import IMPLEMENTATION_ARGS, UpdateRule
from pyroopt.kernels.rmsprop import RMSpropRule
from pyroopt.kernels.sgd import SGDRule

#: torch optimizer class -> the rule that computes the same update on flat buffers
RULES: dict[type[Optimizer], UpdateRule] = {
    ADAM.torch_class: ADAM,
    ADAMW.torch_class: ADAMW,
    SGDRule.torch_class: SGDRule(),
    RMSpropRule.torch_class: RMSpropRule(),
}

__all__ = ["IMPLEMENTATION_ARGS", "RULES", "UpdateRule"]
