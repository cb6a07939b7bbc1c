"""The sharded training loop shared by pretraining and fine-tuning.

A task supplies an `Objective` (how to create its parameters and compute its loss); this module does the
rest, the same way for every task:

    create_train_state   parameters and optimizer state created already sharded (eval_shape -> shardings
                         -> jax.jit(init, out_shardings=...)), or from given weights (continued training)
    make_train_step      one jitted update that donates the state, folds the step into the RNG,
                         accumulates gradients over micro-batches and returns scalar metrics
    make_eval_step       the same loss without dropout or updates
    train                the host loop: data phases, metrics (checked for NaN on the host), periodic
                         evaluation, Orbax checkpoints, SIGTERM -> save and raise Preempted, resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from bert_jax import optim, sharding
from bert_jax.checkpoints import CheckpointMismatchError, Checkpointer
from bert_jax.train_metrics import MetricsWriter

# ----------------------------------------------------------------------------------------------------
# State and objective
# ----------------------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far
    params: Any  # float32, in the model's own layout (scanned or not)
    opt_state: Any
    rng: jax.Array  # base PRNG key (uint32[2]); step k draws its dropout from fold_in(rng, k)


class Objective(Protocol):
    """What a task plugs into the trainer.

    `loss` must be additive over micro-batches: it divides by whole-batch counts given by
    `normalizers(batch)` (computed once on the full global batch), not by the micro-batch's own, so
    that summing micro-batch losses and gradients reproduces the full batch exactly. Metrics follow
    the same rule (e.g. accuracy = correct / normalizers['count']).
    """

    def init_params(self, rng: jax.Array) -> Any:
        """Parameters with logical axis names (nn.Partitioned boxes), as module.init returns them."""

    def normalizers(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        ...

    def loss(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
             normalizers: Mapping[str, jax.Array], train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        ...


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; raised before anything of that state is saved."""


PREEMPTED_EXIT_STATUS = 143  # 128 + SIGTERM: what the CLI exits with after Preempted ("saved, requeue me")


class Preempted(Exception):
    """`train` stopped early on SIGTERM (or a multi-host preemption notice) after saving a checkpoint of `step`:
    running again on the same workdir resumes there. Raised, not returned, so that no caller takes the stopped
    run for a finished one; `state` is the TrainState at `step`. The CLI turns it into PREEMPTED_EXIT_STATUS, the
    status schedulers are told to requeue on (docs/launching.md)."""

    def __init__(self, step: int, state: Any, checkpoint_dir: Optional[str]):
        self.step, self.state, self.checkpoint_dir = step, state, checkpoint_dir
        saved = (f"the checkpoint of step {step} is saved in {checkpoint_dir}; run again with the same workdir to "
                 f"resume" if checkpoint_dir else "no checkpoint was saved (checkpointing is off)")
        super().__init__(f"stopped at step {step} on SIGTERM: {saved}")


# ----------------------------------------------------------------------------------------------------
# Sharded state creation
# ----------------------------------------------------------------------------------------------------


def state_shardings(objective: Objective, optimizer: optax.GradientTransformation, mesh) -> TrainState:
    """NamedShardings for every leaf of the TrainState, from the parameters' logical names."""
    boxed = jax.eval_shape(objective.init_params, jax.random.PRNGKey(0))
    param_shardings = sharding.logical_shardings(boxed, mesh)
    abstract_opt = jax.eval_shape(optimizer.init, nn.meta.unbox(boxed))
    return TrainState(step=sharding.replicated(mesh), params=param_shardings,
                      opt_state=sharding.optimizer_state_shardings(optimizer, abstract_opt, param_shardings, mesh),
                      rng=sharding.replicated(mesh))


def abstract_train_state(objective: Objective, optimizer: optax.GradientTransformation, shardings: TrainState):
    """ShapeDtypeStructs carrying the target shardings: what a checkpoint restores onto."""
    def init(rng):
        params = nn.meta.unbox(objective.init_params(rng))
        return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params), rng=rng)

    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def create_train_state(objective: Objective, optimizer: optax.GradientTransformation, mesh, seed: int,
                       params: Optional[Any] = None) -> tuple[TrainState, TrainState]:
    """A fresh TrainState created directly in its shards, and its shardings.

    With `params` (host arrays, e.g. a pretrained model for continued pretraining or fine-tuning) those
    weights are placed into their shards instead of being initialised; the optimizer starts fresh.
    """
    shardings = state_shardings(objective, optimizer, mesh)
    rng = jax.random.PRNGKey(seed)
    init_rng, train_rng = jax.random.split(rng)

    def init(params):
        if params is None:
            params = nn.meta.unbox(objective.init_params(init_rng))
        return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params), rng=train_rng)

    if params is None:
        state = jax.jit(lambda: init(None), out_shardings=shardings)()
    else:
        expected = jax.eval_shape(lambda: nn.meta.unbox(objective.init_params(init_rng)))
        check_same_shapes(expected, params)
        placed = jax.device_put(params, shardings.params)
        state = jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings, donate_argnums=0)(placed)
    return state, shardings


def resume(objective: Objective, optimizer: optax.GradientTransformation, mesh, checkpointer: Checkpointer,
           announce: Callable[[str], None], what: str) -> Optional[tuple[TrainState, TrainState, Optional[dict]]]:
    """(state, shardings, input state) of the newest checkpoint that restores onto this objective and optimizer,
    or None when the checkpointer has none. Damaged checkpoints are moved aside on the way and announced; one that
    does not fit (`what`: what it must fit, e.g. "model and optimizer") is a ValueError saying so."""
    if checkpointer.latest_step() is None:
        return None
    shardings = state_shardings(objective, optimizer, mesh)
    try:
        latest, state, data_state = checkpointer.restore_latest(abstract_train_state(objective, optimizer, shardings))
    except CheckpointMismatchError as e:
        raise ValueError(f"{e}: cannot restore onto this config's {what}; use a new workdir or the config the "
                         f"checkpoint was written with") from None
    finally:
        for damaged in checkpointer.set_aside:
            announce(f"damaged checkpoint: {damaged}")
    announce(f"resuming from the checkpoint at step {latest} in {checkpointer.directory}")
    return state, shardings, data_state


def check_same_shapes(expected: Any, given: Any, what: str = "initial parameters") -> None:
    """Every tensor present, with the expected shape: a clear error instead of a failure inside jit."""
    want = {optim.path_name(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(expected)}
    have = {optim.path_name(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(given)}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise ValueError(f"{what}: missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected tensors {extra[:5]}{'...' if len(extra) > 5 else ''}")
    wrong = [f"{k}: {have[k]} != expected {want[k]}" for k in want if tuple(have[k]) != tuple(want[k])]
    if wrong:
        raise ValueError(f"{what}: shape mismatch for {len(wrong)} tensors, e.g. {wrong[0]}")


# ----------------------------------------------------------------------------------------------------
# Jitted steps
# ----------------------------------------------------------------------------------------------------


def make_train_step(objective: Objective, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    mesh, shardings: TrainState, num_micro_batches: int = 1) -> Callable:
    """(state, global batch) -> (new state, scalar metrics); the old state's buffers are donated."""

    def update(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        normalizers = objective.normalizers(batch)  # whole-batch counts, so micro-batch losses add up

        def loss_fn(params, micro_batch, index):
            return objective.loss(params, micro_batch, jax.random.fold_in(rng, index), normalizers, True)

        (loss, metrics), grads = optim.accumulate_gradients(loss_fn, state.params, batch, num_micro_batches)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                       learning_rate=schedule(state.step))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    batch_sharding = sharding.batch_sharding(mesh)
    jitted = jax.jit(update, in_shardings=(shardings, batch_sharding),
                     out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    return sharding.with_mesh(jitted, mesh)


def make_eval_step(objective: Objective, mesh, shardings: TrainState) -> Callable:
    """(params, global batch) -> scalar metrics of the loss without dropout."""

    def evaluate(params, batch):
        normalizers = objective.normalizers(batch)
        loss, metrics = objective.loss(params, batch, jax.random.PRNGKey(0), normalizers, False)
        return dict(metrics, loss=loss)

    jitted = jax.jit(evaluate, in_shardings=(shardings.params, sharding.batch_sharding(mesh)),
                     out_shardings=sharding.replicated(mesh))
    return sharding.with_mesh(jitted, mesh)


# ----------------------------------------------------------------------------------------------------
# The host loop
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    """A stretch of training with one input shape (BERT: 90% of steps at length 128, then 512).

    `make_iterator(continue_from)` yields this process's rows of each global batch as a dict of numpy
    arrays; if the iterator has get_state()/set_state(state) (JSON-serialisable), checkpoints record its
    position, and the next phase gets the final state of this one as `continue_from` (None at the
    start) so that it can carry on through the input instead of starting over.
    """

    name: str
    end_step: int  # exclusive: the phase runs until state.step == end_step
    global_batch_size: int
    make_iterator: Callable[[Optional[dict]], Iterator[Mapping[str, np.ndarray]]]
    flops_per_sequence: float = 0.0  # model FLOPs of one training sequence, for MFU
    tokens_per_sequence: int = 0


def phase_at(phases: Sequence[Phase], step: int) -> int:
    for index, phase in enumerate(phases):
        if step < phase.end_step:
            return index
    return len(phases) - 1


class _Signals:
    """SIGTERM (a preemption notice, or a user's kill) asks the loop to save and stop cleanly.

    With several processes JAX's coordination service owns SIGTERM and agrees on a common step
    (Checkpointer.reached_preemption); a Python handler would override it, so it is installed only
    for a single process.
    """

    def __init__(self):
        self.stop_requested = False

    @contextlib.contextmanager
    def installed(self):
        if jax.process_count() > 1:
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping after this step")
        self.stop_requested = True


def _gather_process_states(local_state: Any) -> list:
    """Every process's JSON data-iterator state, so the checkpoint holds all of them."""
    encoded = json.dumps(local_state)
    if jax.process_count() == 1:
        return [json.loads(encoded)]
    data = np.frombuffer(encoded.encode(), np.uint8)
    longest = int(np.max(multihost_utils.process_allgather(np.array([len(data)]))))
    padded = np.zeros(longest, np.uint8)
    padded[:len(data)] = data
    rows = multihost_utils.process_allgather(padded[None], tiled=True)
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in rows]


def train(*, state: TrainState, train_step: Callable, phases: Sequence[Phase], mesh,
          checkpointer: Optional[Checkpointer], writer: MetricsWriter, data_state: Optional[dict] = None,
          log_every: int = 100, eval_every: int = 0, evaluate: Optional[Callable[[TrainState], dict]] = None,
          peak_flops_per_device: float = 0.0, hooks: Sequence[Callable[[int, TrainState], None]] = (),
          on_save: Optional[Callable[[int, TrainState], None]] = None) -> TrainState:
    """Runs from state.step to the last phase's end_step and returns the final state.

    Raises Preempted after SIGTERM (the checkpoint of the step it stopped at saved) and
    checkpoints.CheckpointSaveError as soon as a save fails (no step is trained past it).

    `data_state` is what the checkpoint restored (None for a fresh start). Metrics of each step stay on
    the device until the next log step, where they are fetched together (no per-step host sync), checked
    for NaN/inf (naming the first bad step) and written. A checkpoint is never written for a state whose
    metrics have not been checked.
    """
    step = int(state.step)
    total = phases[-1].end_step
    pending: list[tuple[int, dict]] = []
    timer = _Throughput(mesh.devices.size, peak_flops_per_device)

    def flush(phase: Phase):
        nonlocal pending
        if not pending:
            return
        fetched = jax.device_get(pending)
        pending = []
        for s, metrics in fetched:
            if not all(math.isfinite(float(v)) for v in metrics.values()):
                bad = {k: float(v) for k, v in metrics.items() if not math.isfinite(float(v))}
                last = checkpointer.latest_step() if checkpointer else None
                raise NonFiniteLossError(
                    f"non-finite training metrics at step {s}: {bad}; stopping without saving "
                    f"(last good checkpoint: {'none' if last is None else f'step {last}'})")
        last_step = fetched[-1][0]
        means = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
        means["learning_rate"] = float(fetched[-1][1]["learning_rate"])
        means.update(timer.rates(last_step, phase))
        writer.write_train(last_step, means)

    def save(phase_index: int, iterator, force: bool):
        if checkpointer is None:
            return
        iterator_state = iterator.get_state() if hasattr(iterator, "get_state") else None
        data = {"phase": phase_index, "step": step, "process_states": _gather_process_states(iterator_state)}
        if checkpointer.save(step, state, data, force=force) and on_save is not None:
            on_save(step, state)

    signals = _Signals()
    with signals.installed():
        phase_index = phase_at(phases, step)
        iterator = None
        while step < total:
            phase = phases[phase_index]
            iterator = _start_phase(phase, phase_index, data_state, iterator)
            data_state = None
            first_step_of_phase = True
            while step < phase.end_step:
                try:
                    local = next(iterator)
                except StopIteration:
                    raise RuntimeError(f"phase {phase.name!r}: the input ran out at step {step} "
                                       f"(it must provide batches up to step {phase.end_step})") from None
                batch = sharding.global_batch(local, mesh)  # rows: the batch's (packing changes how many)
                state, metrics = train_step(state, batch)
                pending.append((step + 1, metrics))
                step += 1
                if first_step_of_phase:  # the first step compiles: keep it out of the throughput
                    jax.block_until_ready(metrics)
                    timer.restart(step)
                    first_step_of_phase = False
                for hook in hooks:
                    hook(step, state)
                if checkpointer is not None:
                    checkpointer.check()  # an asynchronous save that failed stops the run now
                stop = signals.stop_requested or (checkpointer is not None and checkpointer.reached_preemption(step))
                last = step == total
                saving = checkpointer is not None and (stop or last or checkpointer.should_save(step))
                if step % log_every == 0 or saving or step == phase.end_step:
                    flush(phase)
                if saving:
                    save(phase_index, iterator, force=stop or last)
                if evaluate is not None and eval_every and (step % eval_every == 0 or last):
                    writer.write_eval(step, evaluate(state))
                    timer.restart(step)
                if stop:
                    if checkpointer is not None:
                        checkpointer.wait()
                    logging.warning("stopped at step %d on SIGTERM; the checkpoint is saved", step)
                    raise Preempted(step, state, checkpointer.directory if checkpointer is not None else None)
            phase_index = min(phase_index + 1, len(phases) - 1)
    if checkpointer is not None:
        checkpointer.wait()
    return state


def _start_phase(phase: Phase, phase_index: int, data_state: Optional[dict], previous) -> Iterator:
    """The phase's input, positioned: where the checkpoint left it (same phase), after the previous
    phase's input (a checkpoint at the boundary, or a phase change within this run), or at the start."""
    saved = _local_input_state(data_state, phase.name)
    if saved is not None and data_state["phase"] == phase_index:
        iterator = phase.make_iterator(None)
        if not hasattr(iterator, "set_state"):
            logging.warning("phase %r input cannot be repositioned; it restarts from its beginning", phase.name)
        else:
            iterator.set_state(saved)
        return iterator
    if saved is not None and data_state["phase"] == phase_index - 1:
        return phase.make_iterator(saved)
    if previous is not None and hasattr(previous, "get_state"):
        return phase.make_iterator(previous.get_state())
    return phase.make_iterator(None)


def _local_input_state(data_state: Optional[dict], phase_name: str) -> Optional[dict]:
    """This process's saved input position, if the checkpoint has a usable one."""
    if not data_state:
        return None  # a fresh start
    states = data_state.get("process_states") or []
    if len(states) != jax.process_count():
        logging.warning("checkpoint has input positions for %d processes but %d are running: phase %r input "
                        "restarts from its beginning", len(states), jax.process_count(), phase_name)
        return None
    return states[jax.process_index()]


class _Throughput:
    """seq/s, tokens/s and MFU over the steps since the last report (compilation excluded)."""

    def __init__(self, num_devices: int, peak_flops_per_device: float):
        self.num_devices = num_devices
        self.peak = peak_flops_per_device
        self.start_time, self.start_step = None, None

    def restart(self, step: int):
        self.start_time, self.start_step = time.perf_counter(), step

    def rates(self, step: int, phase: Phase) -> dict:
        if self.start_time is None or step <= self.start_step:
            return {}
        elapsed = time.perf_counter() - self.start_time
        steps = step - self.start_step
        seqs = steps * phase.global_batch_size / elapsed
        out = {"steps_per_sec": steps / elapsed, "seq_per_sec": seqs}
        if phase.tokens_per_sequence:  # 0: batches of varying length (fine-tuning's length buckets)
            out["tokens_per_sec"] = seqs * phase.tokens_per_sequence
        if self.peak and phase.flops_per_sequence:
            out["mfu"] = seqs * phase.flops_per_sequence / (self.peak * self.num_devices)
        self.restart(step)
        return out
