"""pyroopt.torch under PyTorch Lightning: Pyro's svi_lightning.py pattern, same losses."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule

import pyroopt.torch

pl = pytest.importorskip("pytorch_lightning")

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]
SIZE, BATCH = 400, 50


class Model(PyroModule):
    """Pyro's svi_lightning.py model: a data-parallel regression that subsamples."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, covariates, data=None):
        coeff = pyro.sample("coeff", dist.Normal(0, 1))
        bias = pyro.sample("bias", dist.Normal(0, 1))
        scale = pyro.sample("scale", dist.LogNormal(0, 1))
        with pyro.plate("data", self.size, len(covariates)):
            loc = bias + coeff * covariates
            return pyro.sample("obs", dist.Normal(loc, scale), obs=data)


class PyroLightningModule(pl.LightningModule):
    def __init__(self, loss_fn, optimizer, lr):
        super().__init__()
        self.loss_fn = loss_fn
        self.optimizer_class = optimizer
        self.lr = lr
        self.losses = []

    def training_step(self, batch, batch_idx):
        loss = self.loss_fn(*batch)
        self.losses.append(loss.detach().clone())
        return loss

    def configure_optimizers(self):
        return self.optimizer_class(self.loss_fn.parameters(), lr=self.lr)


def train(optimizer, epochs=3):
    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(20200723)
        model = Model(SIZE)
        covariates = torch.randn(SIZE)
        data = model(covariates)
        guide = AutoNormal(model)
        loss_fn = Trace_ELBO()(model, guide)
        plan = PyroLightningModule(loss_fn, optimizer, 0.01)
        dataset = torch.utils.data.TensorDataset(covariates, data)
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH)
        loss_fn(*dataset[:BATCH])  # the example initialises the guide before fitting
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(plan, train_dataloaders=loader)
        return plan.losses, [p.detach().clone() for p in loss_fn.parameters()], trainer


@pytest.mark.slow
def test_lightning_losses_equal_torch_adam():
    theirs, their_params, _ = train(torch.optim.Adam)
    ours, our_params, trainer = train(pyroopt.torch.Adam)
    assert len(ours) == len(theirs) == 3 * SIZE // BATCH
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(a, b), f"loss differs at step {step}: {a} vs {b}"
    for a, b in zip(our_params, their_params, strict=True):
        assert torch.equal(a, b)
    assert isinstance(trainer.optimizers[0], pyroopt.torch.Adam)
