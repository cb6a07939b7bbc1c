"""Meshes, logical-axis rules, sharded state creation and global batch assembly.

One device mesh with three axes:

    data    pure data parallelism (parameters replicated),
    fsdp    data parallelism with parameters and optimizer state sharded (ZeRO-3 style),
    tensor  tensor parallelism: attention heads, MLP width and vocabulary split across devices.

The model names the axes of every parameter and of its main activations (bert_jax/model.py);
LOGICAL_AXIS_RULES below is the one place that maps those names to mesh axes. The mesh uses Auto axis
types (JAX 0.10's jax.make_mesh defaults to Explicit): with Auto, XLA's sharding propagation fills in
everything the rules leave open, which is what flax linen's logical constraints are written for.

The same code runs on one CPU device (a 1x1x1 mesh, every rule a no-op), a GPU host, and a TPU pod slice
(one process per host: call `initialize_distributed` first, each process feeds its own rows of the
global batch through `global_batch`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both data-parallel axes

# (logical name, mesh axes), highest priority first; names not listed (layers, length, act_embed, and
# the None axes) stay replicated.
LOGICAL_AXIS_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("act_embed_out", "tensor"),
    ("embed", "fsdp"),
)


# ----------------------------------------------------------------------------------------------------
# Processes and meshes
# ----------------------------------------------------------------------------------------------------


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
    """Joins a multi-process run; a no-op for a single process.

    Explicit when a coordinator address is given (GPU clusters, or two local CPU processes in tests).
    Otherwise automatic where JAX can discover the cluster itself: Cloud TPU pod slices (more than one
    host in TPU_WORKER_HOSTNAMES) and SLURM jobs with more than one task.
    """
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id too")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
    else:
        return
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes for MESH_AXES from a {axis: size} mapping; one size may be -1 (the remaining devices)."""
    unknown = sorted(set(axes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh: unknown axes {unknown}; the axes are {MESH_AXES}")
    sizes = [int(axes.get(name, 1)) for name in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh: {num_devices} devices do not divide by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(axes: Mapping[str, int], devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A data x fsdp x tensor mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(axes, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


# ----------------------------------------------------------------------------------------------------
# Shardings
# ----------------------------------------------------------------------------------------------------


def logical_shardings(boxed_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree whose leaves carry logical names (nn.Partitioned boxes); unnamed
    leaves (optimizer step counters, RNG keys) are replicated."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over the data-parallel axes, everything else whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def optimizer_state_shardings(optimizer: Any, abstract_opt_state: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """The optimizer state's moments are sharded like the parameters they track; counters replicated."""
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_opt_state, param_shardings,
                                 transform_non_params=lambda _: replicated(mesh))


def with_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` called under the mesh and the logical-axis rules, which the model's
    nn.with_logical_constraint calls read while jax.jit traces."""
    def wrapped(*args, **kwargs):
        with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
            return fn(*args, **kwargs)

    return wrapped


# ----------------------------------------------------------------------------------------------------
# Global batches from per-process rows
# ----------------------------------------------------------------------------------------------------


def process_rows(mesh: Mesh, global_batch_size: int) -> slice:
    """The contiguous rows of a global batch that this process's devices hold (and so must read)."""
    sharding = batch_sharding(mesh)
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    starts = sorted({idx[0].indices(global_batch_size)[0] for idx in index_map.values()})
    stops = sorted({idx[0].indices(global_batch_size)[1] for idx in index_map.values()})
    rows = slice(starts[0], stops[-1])
    if (rows.stop - rows.start) * jax.process_count() != global_batch_size:
        raise ValueError(f"this process's devices hold rows {rows.start}:{rows.stop} of {global_batch_size}, "
                         "not a contiguous 1/process_count share; put each host's devices together in the mesh")
    return rows


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, global_batch_size: Optional[int] = None) -> dict:
    """Per-process numpy rows -> one global jax.Array per feature, sharded over the batch axes. The global rows
    default to every process's share (process_rows) times the processes: packed batches vary in rows."""
    sharding = batch_sharding(mesh)
    out = {}
    for name, rows in local_batch.items():
        rows = np.asarray(rows)
        total = global_batch_size or len(rows) * jax.process_count()
        out[name] = jax.make_array_from_process_local_data(sharding, rows, (total, *rows.shape[1:]))
    return out
