"""Elastic training: workers that die or join cost a rollback to the last commit.

:class:`ElasticState` holds what a Pyro training loop needs to go on after the set of
workers changed: Pyro's param store, the optimizer's state (step counts, moments,
schedules, ``skipped_steps``), the random generators (torch, Python, NumPy, which
Pyro draws from) and the loop's own counters (epoch, batch, ...).

- :meth:`~ElasticState.commit` snapshots all of it in memory (tensors copied, into
  the memory of the commit before the last where shapes allow). It is all or nothing:
  the new snapshot is built aside and swapped in last, so a failure half-way keeps the
  previous commit. Measured with Adam on float32 parameters (benchmarks/elastic.py, 2
  cores at a load average of 7 to 9): 1000 x 10, a commit took 34 to 65 ms against
  about 1 ms for an optimizer step; 10 x 1,000,000, 160 to 360 ms against 25 to 40 ms.
  Most of it is ``optim.get_state()``: its per-parameter dicts at 1000 x 10, the
  first writes to its freshly allocated snapshot at 10 x 1,000,000. Commit
  every few dozen optimizer steps, or every few SVI steps of a large model.
- :meth:`~ElasticState.restore` puts this worker back at its last commit.
- :meth:`~ElasticState.sync` (collective) finds the newest commit among the workers,
  broadcasts it and restores it everywhere: a joining worker starts exactly where the
  others are, bit for bit. The commit is swapped in only after the broadcast arrived,
  so a worker dying during the sync leaves every survivor's last commit usable.

Horovod (``horovodrun --min-np/--max-np --host-discovery-script``, Gloo): the state is
what ``hvd.elastic.run`` expects. A lost worker makes the others' next collective fail
(``HorovodInternalError``): they restore their commit, re-form a smaller world and
sync. A new worker makes :meth:`~ElasticState.commit` raise ``HostsUpdatedInterrupt``
on every worker; they re-form a larger world and sync. On each reset the state points
the distributed optimizer at the new world
(:meth:`~pyroopt.distributed.DistributedPyroOptim.reset_world`: the average divides by
the live worker count); :func:`~pyroopt.distributed.shard` called inside the training
function splits the data for the new world. A job that starts on one host needs
``--network-interface`` (e.g. ``lo``): horovod otherwise waits for a second host to
agree on an interface with.

``torchrun --nnodes MIN:MAX`` (c10d rendezvous): the elastic agent restarts every
worker PROCESS when a node is lost or joins, so an in-memory commit dies with its
process. Each commit is therefore also written to ``commit_file``, by default
``/dev/shm/pyroopt-elastic-<TORCHELASTIC_RUN_ID>.pt``: memory-backed, local to the
node, written by the node's local rank 0 atomically (a temporary file renamed over the
old one, so a worker killed mid-write leaves the previous commit). At start, the
restarted workers call :meth:`~ElasticState.sync`: each reads its node's file, the
worker holding the newest commit broadcasts it, all restore it. The bound: a commit
costs a serialization and a copy into shared memory (one more copy of the parameters
and the optimizer state, per node); a membership change loses the steps after the
last commit; the job survives as long as one node that wrote the newest commit
survives (the file lives in the node's RAM, not across a reboot). A file left by an
earlier job under the same run id would count as the newest commit: remove the file
at the end of a job with :meth:`~ElasticState.remove_commit_file`.

With torch 2.13, a node that joins a running c10d job waits forever unless the agents
run with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: with the store shared, the agent that
stays rank 0 across the scale-up does not publish the new round's master address. The
rendezvous options ``last_call_timeout`` (default 30 s) and ``keep_alive_interval`` /
``keep_alive_max_attempt`` (a lost node is noticed after 5 s x 3) set how long a
membership change takes.

Example (horovod; launched with ``horovodrun -np 2 --min-np 1 --max-np 2
--host-discovery-script discover.sh --gloo python train.py``)::

    import horovod.torch as hvd
    import pyro, pyroopt
    from pyroopt.distributed import ElasticState, shard

    hvd.init()
    optim = pyroopt.HorovodOptimizer(pyroopt.Adam({"lr": 0.01}))
    svi = pyro.infer.SVI(model, guide, optim, pyro.infer.Trace_ELBO())
    state = ElasticState(optim, step=0)

    @hvd.elastic.run
    def train(state):
        data = shard(full_data)  # this worker's part in the current world
        while state.step < 1000:
            svi.step(data)
            state.step += 1
            if state.step % 10 == 0:
                state.commit()

    train(state)

Under torchrun (``torchrun --nnodes 1:4 --nproc_per_node 1 --max-restarts 3
--rdzv-backend c10d --rdzv-endpoint HOST:PORT train.py``) the same loop runs after
``dist.init_process_group("gloo")``, ``optim = pyroopt.DistributedOptimizer(...)``
and ``state.sync()``, without the decorator.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Mapping
from typing import Any, cast

import pyro
import torch

from pyroopt import atomic_file, checkpoint
from pyroopt.distributed.reduce import DistributedPyroOptim
from pyroopt.optim import PyroOptim

__all__ = ["ElasticState", "read_commit"]

#: attributes an instance sets itself: no counter may take these names
_RESERVED = frozenset({"optim", "local_optim", "commit_file"})

#: the format of a commit (in memory and in a commit file)
COMMIT_FORMAT = 1


def _clone_tree(value: Any) -> Any:
    """``value`` with every tensor cloned (detached, ``requires_grad`` kept), dicts,
    lists and tuples rebuilt, other values shared (they are not changed in place)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone_tree(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_clone_tree(v) for v in value)
    return value


def _copy_into(value: torch.Tensor, spare: torch.Tensor | None) -> torch.Tensor:
    """A copy of ``value``: written into ``spare`` when that fits, else newly allocated.

    Reusing memory matters: fresh memory is paged in on first write, and a clone of
    10 x 1,000,000 float32 took 120 ms where a copy into existing tensors took 15 ms.
    """
    if (
        spare is not None
        and spare.shape == value.shape
        and spare.dtype == value.dtype
        and spare.device == value.device
        and spare.requires_grad == value.requires_grad
    ):
        with torch.no_grad():
            return spare.copy_(value)
    return _clone_tree(value)


def _store_snapshot(spare: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Pyro's param store (unconstrained values, copied, and constraints), by name;
    copies go into ``spare``'s tensor of the same name where it fits."""
    state = pyro.get_param_store().get_state()
    return {
        "params": {
            name: _copy_into(p, spare.get(name)) for name, p in sorted(state["params"].items())
        },
        "constraints": dict(sorted(state["constraints"].items())),
    }


def _constraint_classes() -> list[type]:
    """The constraint classes a param store holds: plain data, safe to unpickle."""
    import pyro.distributions.constraints as pyro_constraints
    import torch.distributions.constraints as torch_constraints

    found = {
        cls
        for module in (torch_constraints, pyro_constraints)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, torch_constraints.Constraint)
    }
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def read_commit(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a commit file written by :class:`ElasticState` (safely: tensors, plain
    values and constraint objects only).

    :param path: the file, e.g. an :class:`ElasticState`'s ``commit_file``.
    :raises ValueError: the file is not a commit.
    """
    with torch.serialization.safe_globals(_constraint_classes()):  # type: ignore[arg-type]
        commit = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    _check_commit(commit, os.fspath(path))
    return dict(commit)


def _check_commit(commit: Any, where: str) -> None:
    keys = {"format", "generation", "param_store", "optimizer", "skipped_steps", "rng"}
    if not (isinstance(commit, Mapping) and keys | {"counters"} <= set(commit)):
        raise ValueError(f"{where} is not an elastic commit (expected the entries {sorted(keys)})")
    if commit["format"] != COMMIT_FORMAT:
        raise ValueError(
            f"{where}: commit format {commit['format']!r}; this pyroopt reads {COMMIT_FORMAT}"
        )


def _default_commit_file() -> str | None:
    """``/dev/shm/pyroopt-elastic-<run id>.pt`` under torchrun, else None."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None or not os.path.isdir("/dev/shm"):
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return f"/dev/shm/pyroopt-elastic-{safe}.pt"


class _Local:
    """One worker alone: every collective is the identity."""

    @property
    def rank(self) -> int:
        return 0

    @property
    def size(self) -> int:
        return 1

    @property
    def local_rank(self) -> int:
        return 0

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any, root: int) -> Any:
        return obj

    def check_host_updates(self) -> None:
        pass

    def on_hosts_updated(self, timestamp: float, update: Any) -> None:
        pass

    def on_reset(self) -> None:
        pass


class _Horovod(_Local):
    """Horovod's live rank and size, its object collectives and its host updates."""

    def __init__(self) -> None:
        import horovod.torch as hvd
        from horovod.common.elastic import State

        self._hvd = hvd
        # horovod's own bookkeeping of host-change notifications: when one arrived,
        # its check raises HostsUpdatedInterrupt on every worker at once
        self._hosts = State(bcast_object=hvd.broadcast_object, get_rank=hvd.rank)

    @property
    def rank(self) -> int:
        return int(self._hvd.rank())

    @property
    def size(self) -> int:
        return int(self._hvd.size())

    @property
    def local_rank(self) -> int:
        return int(self._hvd.local_rank())

    def allgather_object(self, obj: Any) -> list[Any]:
        return list(self._hvd.allgather_object(obj, name="pyroopt.elastic.generations"))

    def broadcast_object(self, obj: Any, root: int) -> Any:
        return self._hvd.broadcast_object(obj, root_rank=root, name="pyroopt.elastic.commit")

    def check_host_updates(self) -> None:
        self._hosts.check_host_updates()

    def on_hosts_updated(self, timestamp: float, update: Any) -> None:
        self._hosts.on_hosts_updated(timestamp, update)

    def on_reset(self) -> None:
        self._hosts.on_reset()  # drops notifications the reset has answered


class _Torch(_Local):
    """``torch.distributed``'s default group (the workers of one torchrun attempt)."""

    def __init__(self, group: Any) -> None:
        import torch.distributed as dist

        self._dist = dist
        self._group = group

    @property
    def rank(self) -> int:
        return int(self._dist.get_rank(self._group))

    @property
    def size(self) -> int:
        return int(self._dist.get_world_size(self._group))

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0"))

    def allgather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self._dist.all_gather_object(out, obj, group=self._group)
        return out

    def broadcast_object(self, obj: Any, root: int) -> Any:
        box = [obj]
        src = root if self._group is None else self._dist.get_global_rank(self._group, root)
        self._dist.broadcast_object_list(box, src=src, group=self._group)
        return box[0]


def _link_for(optim: Any) -> _Local:
    if not isinstance(optim, DistributedPyroOptim):
        return _Local()
    from pyroopt.distributed.horovod import HorovodCollectives
    from pyroopt.distributed.torch_dist import TorchCollectives

    comm = optim._comm
    if isinstance(comm, HorovodCollectives):
        return _Horovod()
    if isinstance(comm, TorchCollectives):
        return _Torch(comm.group)
    raise TypeError(
        f"ElasticState supports pyroopt.HorovodOptimizer and pyroopt.DistributedOptimizer; "
        f"this optimizer talks through {type(comm).__name__}"
    )


class ElasticState:
    """Everything a Pyro training loop needs to survive workers that die or join.

    :param optim: the optimizer SVI steps: a :class:`pyroopt.HorovodOptimizer`, a
        :class:`pyroopt.DistributedOptimizer`, or a plain pyroopt optimizer (one
        worker: commit and restore work, sync has nobody to talk to).
    :param commit_file: where each commit is also written (atomically), for
        restarted processes to find: by default a file in ``/dev/shm`` named after
        ``TORCHELASTIC_RUN_ID`` under torchrun, none otherwise (``None``); pass
        ``False`` for none. Written by each node's local rank 0.
    :param counters: the loop's own values (``epoch=0, batch=0``), read and set as
        attributes (``state.epoch += 1``). Plain values only (numbers, strings,
        tensors, lists, tuples and dicts of them): they travel by pickle and load
        from a commit file safely.

    Every method is called on every worker. Commit and restore are local; sync is
    collective. Construction makes the first commit (generation 0).

    Example (one worker)::

        >>> import pyro, torch, pyroopt
        >>> from pyroopt.distributed import ElasticState
        >>> pyro.clear_param_store()
        >>> x = pyro.param("x", torch.zeros(2)).unconstrained()
        >>> optim = pyroopt.SGD({"lr": 1.0})
        >>> state = ElasticState(optim, step=0)
        >>> def train_step():
        ...     x = pyro.param("x").unconstrained()
        ...     x.grad = torch.ones(2)
        ...     optim([x])
        ...     state.step += 1
        >>> train_step(); state.commit(); train_step()
        >>> pyro.param("x"), state.step
        (tensor([-2., -2.], requires_grad=True), 2)
        >>> state.restore()  # back to the commit
        >>> pyro.param("x"), state.step, state.generation
        (tensor([-1., -1.], requires_grad=True), 1, 1)
    """

    def __init__(
        self,
        optim: Any,
        *,
        commit_file: str | os.PathLike[str] | bool | None = None,
        **counters: Any,
    ) -> None:
        if not isinstance(optim, (PyroOptim, DistributedPyroOptim)):
            raise TypeError(
                "ElasticState needs a pyroopt optimizer (pyroopt.HorovodOptimizer, "
                "pyroopt.DistributedOptimizer or e.g. pyroopt.Adam), got "
                f"{type(optim).__module__}.{type(optim).__qualname__}"
            )
        for name in counters:
            if name.startswith("_") or name in _RESERVED or hasattr(ElasticState, name):
                raise ValueError(
                    f"counter name {name!r} is not allowed: it must not start with '_' and "
                    f"must not be one of ElasticState's own attributes"
                )
        if commit_file is None or commit_file is True:
            path = _default_commit_file()
        elif commit_file is False:
            path = None
        elif isinstance(commit_file, (str, os.PathLike)):
            path = os.fspath(commit_file)
        else:
            raise TypeError(
                f"commit_file must be a path, None (the default) or False, got {commit_file!r}"
            )
        self._counter_names = tuple(counters)
        self.optim = optim
        #: the optimizer that steps the parameters locally (the wrapped one, if distributed:
        #: a distributed optimizer wraps only pyroopt optimizers)
        self.local_optim = cast(
            PyroOptim, optim.wrapped if isinstance(optim, DistributedPyroOptim) else optim
        )
        self.commit_file = path
        self._link = _link_for(optim)
        self._reset_callbacks: list[Callable[[], None]] = []
        for name, value in counters.items():
            setattr(self, name, value)
        self._spare: Mapping[str, torch.Tensor] = {}  # tensors the next commit may reuse
        self._commit: dict[str, Any] = self._snapshot(generation=0)

    # -- commits ----------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """How many commits led to the current one (0: the state at construction)."""
        return int(self._commit["generation"])

    @property
    def counters(self) -> dict[str, Any]:
        """The counters' current values, by name."""
        return {name: getattr(self, name) for name in self._counter_names}

    def committed(self) -> dict[str, Any]:
        """The last commit: param store, optimizer state, ``skipped_steps``, random
        generators, counters, generation. Shared, not copied: do not change it, and
        read it before the commit after next, which reuses its parameters' memory."""
        return self._commit

    def _adopt(self, commit: dict[str, Any]) -> None:
        """Make ``commit`` the last commit; the one it replaces lends its parameter
        tensors to the next commit."""
        if commit is not self._commit:
            self._spare = self._commit["param_store"]["params"]
            self._commit = commit

    def _snapshot(self, generation: int) -> dict[str, Any]:
        return {
            "format": COMMIT_FORMAT,
            "generation": generation,
            "param_store": _store_snapshot(self._spare),
            # get_state's values are snapshots: later steps do not change them
            "optimizer": self.local_optim.get_state(),
            "skipped_steps": int(self.local_optim.skipped_steps),
            "rng": checkpoint.rng_state(),
            "counters": copy.deepcopy(self.counters),
        }

    def save(self) -> None:
        """Commit without checking for host changes (what :meth:`commit` does first).

        All or nothing: the new commit is built (and written to ``commit_file``)
        before it replaces the last one, so an error leaves the last commit in place.
        """
        new = self._snapshot(self.generation + 1)
        if self.commit_file is not None and self._link.local_rank == 0:
            atomic_file.save_atomic(new, self.commit_file)
        self._adopt(new)

    def commit(self) -> None:
        """Snapshot the training state in memory; then, under horovod, raise
        ``HostsUpdatedInterrupt`` on every worker if workers are waiting to join or
        leave (``hvd.elastic.run`` then re-forms the world and syncs)."""
        self.save()
        self.check_host_updates()

    def check_host_updates(self) -> None:
        """Under horovod, raise ``HostsUpdatedInterrupt`` on every worker when the
        driver announced a change of hosts (collective); elsewhere nothing."""
        self._link.check_host_updates()

    def restore(self) -> None:
        """Put the param store, the optimizer, the generators and the counters back at
        the last commit (local: no collective)."""
        self._apply(self._commit)

    def _apply(self, commit: Mapping[str, Any]) -> None:
        store = pyro.get_param_store()
        before = store.get_state()
        rng_before = checkpoint.rng_state()
        try:
            checkpoint.set_rng_state(commit["rng"])
            store.clear()  # parameters that appeared after the commit go too
            params = commit["param_store"]
            store.set_state(
                {
                    "params": _clone_tree(params["params"]),
                    "constraints": dict(params["constraints"]),
                }
            )
            # each name's tensor is new: the optimizer takes the state when it appears
            self.local_optim.set_state(_clone_tree(commit["optimizer"]))
        except BaseException:
            store.clear()
            store.set_state(before)
            checkpoint.set_rng_state(rng_before)
            raise
        self.local_optim.skipped_steps = int(commit["skipped_steps"])
        for name, value in copy.deepcopy(commit["counters"]).items():
            if name in self._counter_names:
                setattr(self, name, value)

    def sync(self) -> None:
        """Give every worker the newest commit any worker holds, and restore it.

        Collective. Each worker offers its generation (read from ``commit_file`` when
        that holds a newer one, as after a torchrun restart); the lowest rank holding
        the newest broadcasts it; everyone adopts and restores it. A failure during
        the broadcast leaves this worker's last commit as it was.

        :raises RuntimeError: on every worker, when a worker could not read its
            ``commit_file`` (naming the worker and the error).
        """
        link = self._link
        own, problem = self._commit, None
        if self.commit_file is not None and os.path.exists(self.commit_file):
            try:
                on_file = read_commit(self.commit_file)
            except Exception as e:  # told to every worker below: none is left waiting
                problem = f"{type(e).__name__}: {e}"
            else:
                if on_file["generation"] > own["generation"]:
                    own = on_file
        offers = link.allgather_object((int(own["generation"]), problem))
        for rank, (_, error) in enumerate(offers):
            if error is not None:
                raise RuntimeError(f"rank {rank} could not read its commit file: {error}")
        generations = [generation for generation, _ in offers]
        root = generations.index(max(generations))
        received = link.broadcast_object(own if link.rank == root else None, root)
        _check_commit(received, f"rank {root}'s commit")
        self._adopt(received if link.rank != root else own)
        self.restore()

    # -- horovod's elastic hooks --------------------------------------------------------
    def on_hosts_updated(self, timestamp: float, update: Any) -> None:
        """Horovod's notification that hosts changed (``hvd.elastic.run`` calls it).

        :param timestamp: when the driver saw the change.
        :param update: horovod's ``HostUpdateResult`` (hosts added, removed or both).
        """
        self._link.on_hosts_updated(timestamp, update)

    def register_reset_callbacks(self, callbacks: list[Callable[[], None]]) -> None:
        """Functions to call after each reset (e.g. to scale the learning rate).

        :param callbacks: functions of no argument, called in order.
        """
        self._reset_callbacks.extend(callbacks)

    def on_reset(self) -> None:
        """After the workers changed: re-bind the optimizer, then the callbacks."""
        self._link.on_reset()
        self.reset()
        for callback in self._reset_callbacks:
            callback()

    def reset(self) -> None:
        """Point the distributed optimizer at the new world (live rank and size)."""
        if isinstance(self.optim, DistributedPyroOptim):
            self.optim.reset_world()

    # -- files --------------------------------------------------------------------------
    def load(self, path: str | os.PathLike[str]) -> None:
        """Adopt the commit in ``path`` and restore it (local): e.g. to continue on one
        worker from a distributed job's commit.

        :param path: a commit file (see :func:`read_commit`).
        """
        commit = read_commit(path)
        self._apply(commit)
        self._adopt(commit)

    def remove_commit_file(self) -> None:
        """Delete ``commit_file`` (if any, and on local rank 0): call at the end of a job."""
        if self.commit_file is not None and self._link.local_rank == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.commit_file)
