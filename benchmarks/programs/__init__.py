"""Whole Pyro programs for the whole-program table (``benchmarks/whole_program.py``).

Each module is a complete training script, run as its own process::

    python -m benchmarks.programs.<name> --optim pyro|pyroopt [--steps N]

The two runs of a program differ in one line only, ``import pyro.optim as optim`` or
``import pyroopt as optim`` (:func:`benchmarks.programs.common.optim_module`). A run
ends by printing one result line: the time spent inside the optimizer's calls and a
checksum of the final parameters (:func:`benchmarks.programs.common.finish`).

- ``tiny_model``: a minipyro-like model, a few scalar parameters, ``Trace_ELBO``;
- ``enumerated_hmm``: an HMM whose hidden states ``TraceEnum_ELBO`` sums out, with a
  small MLP for the emissions;
- ``amortized_vae``: a VAE, encoder and decoder ``nn.Module`` s, on minibatches;
- ``autonormal_sites``: 100 latent sample sites under an ``AutoNormal`` guide.
"""
