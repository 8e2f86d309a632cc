"""Seated parameters live where torch would have put them: every kernel the model runs
on one gives the same bits as on a tensor of its own.

torch's CPU allocator gives every tensor 64-byte-aligned storage, and MKL's matrix
multiply takes other paths, with other summation orders, for operands at other
alignments (``F.linear`` with a float64 weight at an odd element offset of a larger
buffer differed in 46-109 of 3200 outputs). A parameter seated at an unaligned slice of
a flat buffer changed Pyro's CEVAE example's gradients.
"""

from __future__ import annotations

import itertools

import pyro
import pyro.optim
import pytest
import torch
import torch.nn.functional as F

import pyroopt

DTYPES = (torch.float32, torch.float64)

#: parameter shapes of one bucket, in name order: odd sizes put every later parameter at
#: a different offset, and the weights come in several positions
SHAPES = {
    "a_bias": (1,),
    "b_linear": (64, 5),
    "c_odd": (3,),
    "d_square": (64, 64),
    "e_odd": (7,),
    "f_conv": (8, 3, 5),
    "g_batch": (4, 9, 11),
    "h_gru_ih": (3 * 16, 10),
    "i_gru_hh": (3 * 16, 16),
    "j_gru_bias": (3 * 16,),
}


def _seated_params(dtype):
    """The parameters of :data:`SHAPES`, stepped once by pyroopt (so seated)."""
    gen = torch.Generator().manual_seed(0)
    params = {
        name: pyro.param(name, torch.randn(shape, generator=gen, dtype=dtype)).unconstrained()
        for name, shape in SHAPES.items()
    }
    optim = pyroopt.Adam({"lr": 0.01})
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
    optim(list(params.values()))
    (bucket,) = optim._placement.buckets
    assert bucket._values is not None and bucket._values.seated == list(params.values())
    return params


def _own(t):
    """The same values in a tensor of its own (torch's 64-byte-aligned allocation)."""
    return t.detach().clone().requires_grad_()


def _forward_and_backward(fn, weights):
    out = fn(*weights)
    grads = torch.autograd.grad(out.sum() * 1.5, weights)
    return out.detach(), grads


def _cases(params, dtype):
    """``{case: (function of the weights, weights)}`` for the kernels a model runs."""
    gen = torch.Generator().manual_seed(1)

    def x(*shape):
        return torch.randn(shape, generator=gen, dtype=dtype)

    x_linear, x_square, x_conv, x_bmm = x(50, 5), x(50, 64), x(6, 3, 40), x(4, 7, 9)
    x_gru, h_gru = x(5, 10), x(5, 16)
    return {
        "linear 50x5 @ 5x64": (lambda w: F.linear(x_linear, w), [params["b_linear"]]),
        "linear 50x64 @ 64x64": (
            lambda w, b: F.linear(x_square, w) + b.sum(),
            [params["d_square"], params["a_bias"]],
        ),
        "conv1d": (lambda w: F.conv1d(x_conv, w), [params["f_conv"]]),
        "bmm": (lambda w: torch.bmm(x_bmm, w), [params["g_batch"]]),
        "GRU cell": (
            lambda w_ih, w_hh, b: torch._VF.gru_cell(x_gru, h_gru, w_ih, w_hh, b, b),
            [params["h_gru_ih"], params["i_gru_hh"], params["j_gru_bias"]],
        ),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_seated_parameter_starts_at_torchs_alignment(dtype):
    params = _seated_params(dtype)
    for name, p in params.items():
        assert p.data_ptr() % 64 == 0, f"{name} is seated at {p.data_ptr() % 64} bytes off"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernels_on_seated_weights_give_the_bits_of_weights_of_their_own(dtype):
    params = _seated_params(dtype)
    for case, (fn, weights) in _cases(params, dtype).items():
        seated_out, seated_grads = _forward_and_backward(fn, weights)
        own_out, own_grads = _forward_and_backward(fn, [_own(w) for w in weights])
        assert torch.equal(seated_out, own_out), f"{case}: forward differs"
        for g_seated, g_own in zip(seated_grads, own_grads, strict=True):
            assert torch.equal(g_seated, g_own), f"{case}: backward differs"


class _Mlp(torch.nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in itertools.pairwise(sizes)
        )

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.elu(x)
        return x


def _cevae_like_run(optim_module, dtype, steps=50):
    """Several small MLPs (odd widths) trained through SVI, CEVAE-style: a guide network
    amortizes a latent, model networks decode it, ClippedAdam with lrd and weight decay."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    x = torch.randn(100, 5, dtype=dtype)
    y = (x[:, :1] * 2 + torch.randn(100, 1, dtype=dtype)).squeeze(-1)
    encoder = _Mlp([6, 65, 33, 4]).to(dtype)  # -> loc and log-scale of a 2-d latent
    decoder_x = _Mlp([2, 31, 5]).to(dtype)
    decoder_y = _Mlp([2, 17, 1]).to(dtype)

    def model(x, y):
        pyro.module("decoder_x", decoder_x)
        pyro.module("decoder_y", decoder_y)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(
                "z",
                pyro.distributions.Normal(
                    torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype)
                ).to_event(1),
            )
            pyro.sample("x", pyro.distributions.Normal(decoder_x(z), 1.0).to_event(1), obs=x)
            pyro.sample("y", pyro.distributions.Normal(decoder_y(z).squeeze(-1), 1.0), obs=y)

    def guide(x, y):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            out = encoder(torch.cat([x, y.unsqueeze(-1)], -1))
            loc, scale = out[:, :2], F.softplus(out[:, 2:]) + 1e-3
            pyro.sample("z", pyro.distributions.Normal(loc, scale).to_event(1))

    optim = optim_module.ClippedAdam({"lr": 1e-2, "lrd": 0.99, "weight_decay": 1e-3})
    svi = pyro.infer.SVI(model, guide, optim, pyro.infer.Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(steps)]
    store = pyro.get_param_store()
    return losses, {name: store[name].detach().clone() for name in store}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.slow
def test_a_cevae_like_program_is_pyro_optims_bit_for_bit(dtype):
    pyro_losses, pyro_params = _cevae_like_run(pyro.optim, dtype)
    ours_losses, ours_params = _cevae_like_run(pyroopt, dtype)
    assert ours_losses == pyro_losses
    assert pyro_params.keys() == ours_params.keys()
    for name in pyro_params:
        assert torch.equal(ours_params[name], pyro_params[name]), name
