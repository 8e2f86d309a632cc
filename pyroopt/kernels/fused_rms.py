r"""An RMS-normalised step in one pass of torch's fused Adam kernel.

RMSprop and Pyro's AdagradRMSProp both take the step

.. math::

    v \leftarrow \beta v + (1-\beta) g^2, \qquad
    \theta \leftarrow \theta - \mathrm{lr}\, \frac{g}{\sqrt v + \epsilon}

with :math:`g` first negated (``maximize``) and given :math:`\lambda\theta` (L2 weight
decay), exactly as Adam treats its gradient. Adam with :math:`\beta_1 = 0` keeps
:math:`m = g` and steps by :math:`\frac{\mathrm{lr}}{1-\beta_1^t}\, m /
(\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon)`. At :math:`t = 2^{62}` both bias corrections
are exactly 1 in floating point (:math:`\beta^t` underflows to 0 for every
:math:`0 \le \beta < 1`), so that step *is* the RMS step above, computed in one pass
over memory instead of a chain of elementwise passes.

Adam also needs a buffer for :math:`m`. Passing the gradients themselves as that
buffer makes the kernel read :math:`g` and write :math:`m = g` (times -1 under
``maximize``, plus :math:`\lambda\theta`) back into it, elementwise. So the gradients
handed to :func:`fused_rms_update` are overwritten: callers pass a private copy.

Example::

    >>> import torch
    >>> p, g, v = torch.zeros(2), torch.tensor([1.0, -2.0]), torch.zeros(2)
    >>> ok = fused_rms_update([p], [g.clone()], [v], lr=0.1, beta=0.9, eps=0.0,
    ...                       weight_decay=0.0, maximize=False)
    >>> ok, v, p  # p = -lr * g / sqrt(0.1 g^2)
    (True, tensor([0.1000, 0.4000]), tensor([-0.3162,  0.3162]))
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyroopt.kernels._coef import TensorList

#: A step count at which every bias correction of Adam is exactly 1.
_NO_BIAS_CORRECTION = float(2**62)
#: that count as the tensor the kernel reads, per device (the kernel only reads it)
_step_tensors: dict[torch.device, Tensor] = {}


def fused_rms_update(
    params: TensorList,
    grads: TensorList,
    square_avgs: TensorList,
    *,
    lr: float,
    beta: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> bool:
    """The RMS step above on every tensor, overwriting ``grads``.

    Returns ``False`` (having changed nothing) when ``beta`` is outside ``[0, 1)``, where
    :math:`\\beta^t` does not vanish and the mapping onto Adam does not hold.
    """
    if not 0.0 <= beta < 1.0:
        return False
    device = params[0].device
    step = _step_tensors.get(device)
    if step is None:
        step = _step_tensors[device] = torch.tensor(
            _NO_BIAS_CORRECTION, dtype=torch.float32, device=device
        )
    torch._fused_adam_(
        params,
        grads,
        grads,  # m = g: see the module docstring
        square_avgs,
        [],
        [step] * len(params),
        lr=lr,
        beta1=0.0,
        beta2=beta,
        weight_decay=weight_decay,
        eps=eps,
        amsgrad=False,
        maximize=maximize,
    )
    return True
