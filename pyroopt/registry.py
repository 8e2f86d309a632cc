"""Which optimizer classes pyroopt computes itself, and with which update rule.

The engine looks a constructor up here: a class with a rule runs on pyroopt's kernels
(flat buffers for small parameters); a class that is *group-safe* may share one
optimizer object across many parameters; anything else gets one optimizer per
parameter, exactly as pyro.optim builds them.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as PyroAdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam
from torch.optim import Optimizer

from pyroopt import optimizers
from pyroopt.kernels import ADAM, ADAMW, UpdateRule
from pyroopt.kernels.adagrad import ADAGRAD
from pyroopt.kernels.adagrad_rmsprop import AdagradRMSPropRule
from pyroopt.kernels.clipped_adam import ClippedAdamRule
from pyroopt.kernels.rmsprop import RMSpropRule
from pyroopt.kernels.rprop import RpropRule
from pyroopt.kernels.sgd import SGDRule

#: optimizer class -> the rule that computes the same update on flat buffers
RULES: dict[type[Optimizer], UpdateRule] = {
    torch.optim.Adam: ADAM,
    torch.optim.AdamW: ADAMW,
    torch.optim.SGD: SGDRule(),
    torch.optim.RMSprop: RMSpropRule(),
    torch.optim.Rprop: RpropRule(),
    torch.optim.Adagrad: ADAGRAD,
    optimizers.ClippedAdam: optimizers.ClippedAdam.rule,
    PyroClippedAdam: ClippedAdamRule(),
    optimizers.AdagradRMSProp: optimizers.AdagradRMSProp.rule,
    PyroAdagradRMSProp: AdagradRMSPropRule(),
}


def rule_for(constructor: Any) -> UpdateRule | None:
    """The rule that computes ``constructor``'s update, if pyroopt has one."""
    return RULES.get(constructor) if isinstance(constructor, type) else None


def is_group_safe(constructor: Any) -> bool:
    """Whether one ``constructor`` object may serve many parameters.

    True for torch's optimizers (their hyperparameters never change inside ``step``;
    LBFGS is excluded, it needs a closure per step) and for pyroopt's own optimizers
    (they change a group only as their rule says, e.g. ClippedAdam's ``lrd``, which the
    engine accounts for).
    """
    if not (isinstance(constructor, type) and issubclass(constructor, Optimizer)):
        return False
    if issubclass(constructor, optimizers.RuleOptimizer):
        return True
    return constructor.__module__.startswith("torch.optim") and constructor is not torch.optim.LBFGS


def group_rule(constructor: Any) -> UpdateRule | None:
    """The rule that says how ``constructor`` changes its groups on each step, if any."""
    if isinstance(constructor, type) and issubclass(constructor, optimizers.RuleOptimizer):
        return constructor.rule
    return rule_for(constructor)
