"""Every partitioning decision in one place; the model knows nothing of meshes.

A 2-D mesh (`data`, `fsdp`): the batch is split over both axes; parameters and optimizer state are
replicated over `data` and, under FSDP, split along `fsdp` on their largest divisible dimension.
XLA's SPMD partitioner then inserts the all-gathers and reduce-scatters: no hand-made collectives.

`fsdp` is the inner (fastest-varying) mesh axis, so with devices listed host by host it stays within
a node (NVLink) and `data` spans nodes, where only the gradient all-reduce crosses the slower
network. The layout follows nanodo's `fsdp.py` and MaxText's `data`/`fsdp` mesh axes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)
# Leaves smaller than this stay replicated: sharding a LayerNorm scale saves nothing, adds a gather.
MIN_SHARDED_SIZE = 2**12


class DistributedError(RuntimeError):
    """A multi-process environment that is described only in part."""


def mesh_shape(mesh_data: int, mesh_fsdp: int, num_devices: int) -> tuple[int, int]:
    """Resolve -1 in (mesh_data, mesh_fsdp) against the device count.

    Errors are `ConfigError`s naming the key, so the CLI reports them in one line before compiling.
    """
    from minigpt_jax.config import ConfigError

    if mesh_data == -1 and mesh_fsdp == -1:
        raise ConfigError("mesh_data", "mesh_data and mesh_fsdp cannot both be -1; set one")
    for key, size in (("mesh_data", mesh_data), ("mesh_fsdp", mesh_fsdp)):
        if size == 0 or size < -1:
            raise ConfigError(key, f"{size}: use a positive size, or -1 for the devices left")
    other = mesh_fsdp if mesh_data == -1 else mesh_data
    if (mesh_data == -1 or mesh_fsdp == -1) and num_devices % other:
        raise ConfigError(
            "mesh_fsdp" if mesh_data == -1 else "mesh_data",
            f"{other} does not divide the {num_devices} devices; use a divisor of {num_devices}",
        )
    if mesh_data == -1:
        mesh_data = num_devices // mesh_fsdp
    if mesh_fsdp == -1:
        mesh_fsdp = num_devices // mesh_data
    if mesh_data * mesh_fsdp != num_devices:
        raise ConfigError(
            "mesh_data",
            f"mesh_data={mesh_data} x mesh_fsdp={mesh_fsdp} does not use the {num_devices} "
            f"devices; choose sizes whose product is {num_devices} (or -1 for one of them)",
        )
    return mesh_data, mesh_fsdp


def make_mesh(
    mesh_data: int = -1, mesh_fsdp: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (data, fsdp) mesh over all devices (every process's); one axis may be -1 for the rest.

    `jax.make_mesh` orders devices by the interconnect's topology where it knows it (TPU, GPU ids);
    the axes are `Auto` so that jit's in/out shardings drive XLA's sharding propagation.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_data, mesh_fsdp, len(devices))
    return jax.make_mesh(shape, (DATA, FSDP), axis_types=(AxisType.Auto,) * 2, devices=devices)


def param_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Shard the largest dimension that `fsdp_size` divides; replicate small or indivisible leaves.

    The rule depends on the shape alone, so Adam's `mu`/`nu` (shaped like their parameter) get the
    same spec as the parameter and the update is elementwise on local shards, with no communication.
    Every architecture switch's parameters take this one rule: the untied head `lm_head` (V, D) is
    split along the vocabulary like `wte`; Muon's momentum follows its matrix (Newton-Schulz then
    runs on the sharded matrix and XLA gathers what it needs); RMSNorm gains stay replicated.
    """
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP
            return P(*spec)
    return P()


def tree_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pytree of arrays (train state, params) by the FSDP rule.

    Takes `jax.eval_shape` output (or real arrays), so a plan for gpt2-xl costs no memory.
    """
    fsdp_size = mesh.shape[FSDP]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, param_spec(tuple(leaf.shape), fsdp_size)), abstract_tree
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over every device (data x fsdp): FSDP devices see different rows too."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh, key: str = "batch_size") -> None:
    """Fail before compiling when a (micro-)batch cannot be split evenly over the mesh."""
    n = mesh.size
    if batch_size % n:
        raise ValueError(
            f"config.{key}={batch_size} cannot be split over the {n} devices of the mesh "
            f"(data={mesh.shape[DATA]} x fsdp={mesh.shape[FSDP]}); use a multiple of {n}"
        )


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's rows into one batch-sharded global array (one host or many).

    Each process passes only the rows it read (Grain's slice for `jax.process_index()`); the global
    batch is `process_count` times as long and no host ever holds another host's rows.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def per_device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of `tree` (arrays or ShapeDtypeStructs) under `shardings`.

    The largest shard is counted, which for even shardings is every device's.
    """
    leaves = jax.tree.leaves(tree)
    specs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(leaves) != len(specs):
        raise ValueError(f"{len(leaves)} leaves but {len(specs)} shardings")
    total = 0
    for leaf, sharding in zip(leaves, specs, strict=True):
        shard = sharding.shard_shape(tuple(leaf.shape))
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


_SLURM_STEP_VARS = (
    "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"
)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def initialize_distributed() -> bool:
    """Join a multi-process job when the environment describes one; a no-op on one process.

    Two ways to describe the job, so that every host runs the same `python -m minigpt_jax.train`:
    - explicitly: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID (and
      optionally JAX_LOCAL_DEVICE_IDS), from a launcher script, Kubernetes or a TPU pod's startup;
    - a launcher JAX reads by itself: SLURM (`srun` with more than one task) and Open MPI
      (`mpirun -n N`), where `jax.distributed.initialize()` finds the coordinator, the process
      count and this process's id and GPU (one process per GPU, as JAX's SLURM support expects).
    Must run before anything touches a JAX device. Returns whether a multi-process job was joined.
    """
    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = _env_int("JAX_NUM_PROCESSES")
    process_id = _env_int("JAX_PROCESS_ID")
    # The variables JAX's SLURM detection needs exist only inside an `srun` step: a plain `python`
    # in an sbatch script with --ntasks=16 is one process, not the first of sixteen.
    in_srun_step = all(v in os.environ for v in _SLURM_STEP_VARS)
    slurm_tasks = _env_int("SLURM_NTASKS") if in_srun_step else None
    mpi_ranks = _env_int("OMPI_COMM_WORLD_SIZE") if "OMPI_MCA_orte_hnp_uri" in os.environ else None
    cluster = (slurm_tasks or 1) > 1 or (mpi_ranks or 1) > 1
    if coordinator and not cluster and (num_processes is None or process_id is None):
        raise DistributedError(
            f"JAX_COORDINATOR_ADDRESS={coordinator} is set but JAX_NUM_PROCESSES and "
            f"JAX_PROCESS_ID are not: set all three on every host (ids 0..N-1, 0 on the "
            f"coordinator's host)"
        )
    if num_processes is not None and num_processes > 1 and not coordinator and not cluster:
        raise DistributedError(
            f"JAX_NUM_PROCESSES={num_processes} but no JAX_COORDINATOR_ADDRESS=host:port; set it "
            f"to the address of process 0 on every host"
        )
    if not (cluster or (num_processes or 1) > 1):
        return False
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        # CPU devices in several processes talk through gloo (tests and CPU clusters).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return True


def jit_sharded(
    init_fn: Callable[[jax.Array], Any],
    train_step: Callable[[Any, Any], tuple[Any, Any]],
    rng: jax.Array,
    mesh: Mesh,
) -> tuple[Any, Any, Callable, Callable]:
    """Jit a train state's init and step over `mesh`: (abstract state, shardings, init, step).

    Init runs under jit with the state's output shardings, so parameters are born sharded and never
    exist whole on one device; the step takes the batch split over every device and donates the
    state, so the new state overwrites the old in place.
    """
    abstract_state = jax.eval_shape(init_fn, rng)
    state_shardings = tree_shardings(abstract_state, mesh)
    init = jax.jit(init_fn, out_shardings=state_shardings)
    step = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )
    return abstract_state, state_shardings, init, step
