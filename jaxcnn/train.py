"""Training: a pure train step, an epoch as a few jit-compiled loops, jitted eval.

Data flow (the host only queues calls and reads their losses)::

    data.load -> uint8 [N,H,W,C] on device (once)
    for epoch: perm, keys = order(epoch)                                  # one XLA call
               state, losses = chunk(state, ..., start, groups)  x a few  # ~2 s each
               state, losses = tail(state, ...)       # leftover steps, partial batch
               accuracy, ... = eval_fn(state.params, test_images, test_labels) # one call
               host: log, metrics.jsonl, checkpoint

Randomness is a function of (seed, epoch, step) only (data order and dropout
masks), so a resumed run replays exactly what an uninterrupted one would, and
where the calls split an epoch changes nothing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxcnn import compute, data, microbatch, models, parallel
from jaxcnn.compute import PLAIN, Compute
from jaxcnn.errors import UserError
from jaxcnn.executables import Executables
from jaxcnn.objectives import LOSSES, OPTIMIZERS, make_optimizer, seed_loss


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run. ``get_config`` fills it from the model's seed recipe."""

    model: str
    dataset: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    loss: str
    normalize: tuple[float, float] | None
    seed: int = 0
    data_dir: str | None = None
    train_limit: int | None = None  # first N training images only (smoke tests)
    permute_pixels: bool = False  # seed 001 section 4: one fixed pixel shuffle
    devices: int = 1  # data-parallel over this many local devices
    compute: Compute = PLAIN  # how a step computes, resolved (jaxcnn.compute)
    # Images per step of the test-set evaluation. get_config: 100 on a CPU, where
    # the 10,000 Fashion-MNIST test images took 25-35% less time than at 1000
    # (mnist_cnn, inception, resnet; 2-core EPYC), whose patch matrices outgrow
    # the caches; 1000 elsewhere.
    eval_batch_size: int = 1000
    # About this long per compiled call of an epoch, between which the progress bar
    # moves and Ctrl-C lands; 0: one call per epoch (jaxcnn.train.ChunkedEpoch).
    # None: 2 s on a CPU, where an epoch can take minutes; 0 elsewhere, where one
    # program per epoch with a static trip count stays what was measured.
    progress_seconds: float | None = None

    def to_json(self) -> dict:
        """What ``config.json`` and ``summary.json`` record."""
        out = dataclasses.asdict(dataclasses.replace(self, compute=PLAIN))
        out["compute"] = self.compute.to_json()
        return out


def get_config(model: str, dataset: str, *, backend: str | None = None, **overrides: Any) -> Config:
    """The seed recipe of ``model``, with any non-None ``overrides`` applied and checked.

    Overrides named after a :class:`~jaxcnn.compute.Compute` field (``conv``,
    ``pool``, ``fuse``, ``dtype``, ``unroll``, ``xla_options``, ...) choose how the
    step computes, resolved for ``backend`` (default: this process's,
    ``jax.default_backend()``); the others are :class:`Config` fields.
    """
    recipe = models.get_spec(model).recipe
    values = {
        "model": model,
        "dataset": dataset,
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "optimizer": recipe.optimizer,
        "momentum": recipe.momentum,
        "loss": recipe.loss,
        "normalize": recipe.normalize,
    }
    requested = {k: overrides.pop(k) for k in list(overrides) if k in compute.FIELDS}
    values.update({k: v for k, v in overrides.items() if v is not None})
    backend = backend or jax.default_backend()
    values["compute"] = compute.resolve(requested, backend=backend)
    values.setdefault("progress_seconds", 2.0 if backend == "cpu" else 0.0)
    values.setdefault("eval_batch_size", 100 if backend == "cpu" else 1000)
    config = Config(**values)
    if config.dataset not in data.DATASETS:
        raise UserError(
            f"unknown dataset '{config.dataset}'; choose one of: {', '.join(data.DATASETS)}"
        )
    if config.optimizer not in OPTIMIZERS:
        raise UserError(
            f"unknown optimizer '{config.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}"
        )
    if config.loss not in LOSSES:
        raise UserError(f"unknown loss '{config.loss}'; choose one of: {', '.join(LOSSES)}")
    for name in ("epochs", "batch_size", "eval_batch_size", "devices", "train_limit"):
        value = getattr(config, name)
        if value is not None and value < 1:  # train_limit None: all the data
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise UserError(f"--lr must be a positive number, got {config.lr}")
    if not (config.progress_seconds >= 0 and math.isfinite(config.progress_seconds)):
        raise UserError(f"--progress-seconds must be a number >= 0, got {config.progress_seconds}")
    if not (config.momentum >= 0 and math.isfinite(config.momentum)):
        raise UserError(f"--momentum must be a number >= 0, got {config.momentum}")
    if not 0 <= config.seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and 2**63 - 1, got {config.seed}")
    parallel.check_batch_size(config.batch_size, config.devices)
    if config.devices > 1 and config.compute.microbatches not in ("auto", 1):
        raise UserError("--microbatches needs --devices 1 (across devices a batch is split)")
    return config


MAX_SEED = 2**63 - 1  # what jax.random.key and nnx.Rngs accept (a C long)


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree; checkpointed as is)."""

    params: nnx.State
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class Program:
    """The static half of training: the model's graph, the optimizer, the recipe."""

    graphdef: nnx.GraphDef
    rest: nnx.State  # non-parameter state (dropout rng streams), reseeded every step
    tx: optax.GradientTransformation
    config: Config
    input_shape: tuple[int, int, int]
    mesh: jax.sharding.Mesh | None = None  # data parallelism over the batch axis
    executables: Executables | None = None  # compiled programs kept across runs

    def apply(self, params: nnx.State, images: jax.Array, key: jax.Array | None) -> jax.Array:
        """Float32 model outputs for uint8 images [B,H,W,C]; dropout on iff ``key`` is given.

        With ``compute.dtype == "bfloat16"`` the float32 parameters and the
        preprocessed input are cast to bfloat16 here, inside the differentiated
        function: the forward and backward passes run in bfloat16, the gradients
        arrive in float32 (the cast's transpose) and the optimizer updates
        float32 master weights. Outputs go back to float32 for the loss.
        """
        rest = self.rest if key is None else with_dropout_key(self.rest, key)
        x = data.preprocess(images, self.input_shape, self.config.normalize)
        if self.config.compute.dtype != "float32":
            dtype = jnp.dtype(self.config.compute.dtype)
            params = jax.tree.map(lambda p: p.astype(dtype), params)
            x = x.astype(dtype)
        model = nnx.merge(self.graphdef, params, rest)
        if key is None:
            model.eval()
        else:
            model.train()
        return model(x).astype(jnp.float32)

    def jit(self, fn: Callable, **kwargs: Any) -> Callable:
        """``jax.jit(fn)`` with the run's XLA compiler options (``compute.xla_options``)."""
        options = dict(self.config.compute.xla_options) or None
        return jax.jit(fn, compiler_options=options, **kwargs)

    def compile(self, name: str, jitted: Callable, *args: Any, **closure: Any) -> Callable:
        """``jitted`` (from :meth:`jit`) compiled for ``args``, or loaded from
        ``executables`` without tracing. ``name`` tells this run's programs apart;
        ``closure`` names every value the traced function closes over that neither the
        config nor the arguments' shapes hold (an epoch's length, say): those values
        are part of the program, so they are part of its key too."""
        return self.compile_all({name: (jitted, args, closure)})[name]

    def compile_all(self, programs: dict[str, tuple[Callable, tuple, dict]]) -> dict:
        """:meth:`compile` of each ``name: (jitted, args, closure)``, stored ones loaded
        side by side."""
        if self.executables is None:
            return {
                name: jitted.lower(*args).compile() for name, (jitted, args, _) in programs.items()
            }
        context = program_context(self.config, self.input_shape)
        items = [
            (jitted, args, name, {**context, "closure": closure})
            for name, (jitted, args, closure) in programs.items()
        ]
        return dict(zip(programs, self.executables.compile_all(items), strict=True))


def with_dropout_key(rest: nnx.State, key: jax.Array) -> nnx.State:
    """``rest`` with every rng stream keyed from ``key`` (stream i gets fold_in(key, i)).

    Built functionally rather than with ``nnx.reseed``, which would mutate state
    captured from outside the traced step. Distinct streams get distinct keys so
    the model's dropout layers draw independent masks.
    """
    leaves, treedef = jax.tree.flatten(rest)
    counter = iter(range(len(leaves)))
    leaves = [
        jax.random.fold_in(key, next(counter))
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        else leaf
        for leaf in leaves
    ]
    return jax.tree.unflatten(treedef, leaves)


def create_program(
    config: Config,
    init: nnx.Module | nnx.State | None = None,
    executables: Executables | None = None,
) -> tuple[Program, TrainState]:
    """The static program and the initial state: torch-default init from ``config.seed``,
    or the parameters of ``init``, a model (``parity.load_torch_checkpoint(...)``) or
    its ``nnx.Param`` state. ``executables``: where compiled programs are kept.

    The model is built with ``config.compute`` placed on the run's mesh, so a
    kernel XLA cannot partition (Pallas) knows the devices it runs over.
    """
    mesh = parallel.make_mesh(config.devices)
    placed = dataclasses.replace(config.compute, mesh=mesh)
    tx = make_optimizer(config.optimizer, config.lr, config.momentum)
    graphdef, input_shape, params, rest, opt_state = initial_state(config, placed, tx, executables)
    if init is not None:
        init = nnx.state(init, nnx.Param) if isinstance(init, nnx.Module) else init
        params = _checked_init(params, init)
        opt_state = tx.init(params)
    program = Program(graphdef, rest, tx, config, input_shape, mesh, executables)
    state = TrainState(params, opt_state)
    if mesh is not None:
        state = jax.device_put(state, parallel.replicated(mesh))
    return program, state


def initial_state(config: Config, placed: Compute, tx, executables: Executables | None) -> tuple:
    """``(graphdef, input_shape, params, rest, opt_state)`` of the model built at
    ``config.seed``.

    Drawn eagerly, the torch-default init is ~70 small random ops, each traced and
    fetched from the compilation cache on its own, then the optimizer's zeros: 0.7 s
    of a warm 1-epoch inception run (2-core EPYC). With ``executables`` a warm run
    traces only the model's structure (``nnx.eval_shape``, 0.1 s) and reads the
    values an earlier run stored (:meth:`Executables.values`); they are the same bits.
    """

    def create():
        rngs = nnx.Rngs(params=config.seed, dropout=config.seed)
        return models.create(config.model, rngs=rngs, compute=placed)

    def draw():
        model = create()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        return graphdef, tuple(model.input_shape), params, rest, tx.init(params)

    if executables is None:
        return draw()
    model = nnx.eval_shape(create)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    abstract = (params, rest, jax.eval_shape(tx.init, params))
    context = program_context(config, model.input_shape)
    values = executables.values("initial_state", context, abstract, lambda: draw()[2:])
    return graphdef, tuple(model.input_shape), *values


def program_context(config: Config, input_shape) -> dict[str, Any]:
    """What of the run's config decides its programs and initial state (the key's
    ``context`` in :mod:`jaxcnn.executables`)."""
    context = config.to_json()
    for unused in ("epochs", "data_dir", "train_limit"):  # not read by any program
        del context[unused]
    context["input_shape"] = list(input_shape)
    return context


def _checked_init(params: nnx.State, init: nnx.State) -> nnx.State:
    """``init`` as the model's parameters, once its tree and shapes are the model's."""

    def layout(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return [(jax.tree_util.keystr(k), tuple(a.shape), str(a.dtype)) for k, a in leaves]

    if layout(params) != layout(init):
        raise UserError("the initial parameters do not fit this model (other keys or shapes)")
    return init


def train_step(
    program: Program, state: TrainState, batch: tuple[jax.Array, jax.Array], key: jax.Array
) -> tuple[TrainState, jax.Array]:
    """One optimizer step on one batch: a pure function of (state, batch, key)."""
    images, labels = batch  # [B,H,W,C] uint8, [B] int32
    images = parallel.split_batch(images, program.mesh)
    labels = parallel.split_batch(labels, program.mesh)

    def loss_fn(params, images, labels, key):
        return seed_loss(program.apply(params, images, key), labels, program.config.loss)

    requested = program.config.compute.microbatches if program.mesh is None else 1
    loss, grads = microbatch.value_and_grad(loss_fn, requested, state.params, images, labels, key)
    updates, opt_state = program.tx.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state), loss


def epoch_keys(seed: int, epoch: int) -> tuple[jax.Array, jax.Array]:
    """(data-order key, dropout key) of an epoch: a function of seed and epoch only."""
    key = jax.random.fold_in(jax.random.key(seed), epoch)
    return jax.random.split(key)


def epoch_order(program: Program, n: int, epoch) -> tuple[jax.Array, jax.Array]:
    """(permutation of the ``n`` images, one dropout key per step) of an epoch."""
    order_key, dropout_key = epoch_keys(program.config.seed, epoch)
    full = n // program.config.batch_size  # full + 1 keys whether or not a partial batch
    return jax.random.permutation(order_key, n), jax.random.split(dropout_key, full + 1)


def run_steps(program: Program, state, images, labels, perm, keys, start, length: int):
    """Full-batch steps ``start .. start + length - 1`` of an epoch, one ``lax.scan``."""
    batch_size = program.config.batch_size
    idx = jax.lax.dynamic_slice_in_dim(perm, start * batch_size, length * batch_size)
    step_keys = jax.lax.dynamic_slice_in_dim(keys, start, length)

    def body(state, xs):
        batch, key = xs
        return train_step(program, state, (images[batch], labels[batch]), key)

    unroll = max(1, min(program.config.compute.unroll, length))
    return jax.lax.scan(body, state, (idx.reshape(length, batch_size), step_keys), unroll=unroll)


def run_tail(program: Program, state, images, labels, perm, keys, start: int):
    """The epoch's steps from full-batch step ``start`` on, and its final partial batch
    (PyTorch's ``DataLoader`` keeps it) as one more step."""
    n, batch_size = images.shape[0], program.config.batch_size
    full = n // batch_size
    losses = jnp.zeros((0,), jnp.float32)
    if full > start:
        state, losses = run_steps(program, state, images, labels, perm, keys, start, full - start)
    if n % batch_size:
        idx = perm[full * batch_size :]
        state, last = train_step(program, state, (images[idx], labels[idx]), keys[full])
        losses = jnp.concatenate([losses, last[None]])
    return state, losses


def make_epoch_fn(program: Program) -> Callable:
    """``epoch_fn(state, images, labels, epoch) -> (state, per-step losses)``, one jit.

    The whole epoch as one program (what the census compiles): the same
    :func:`run_groups` and :func:`run_tail` a :class:`ChunkedEpoch` calls.
    """

    def epoch_fn(state, images, labels, epoch):
        n, unroll = images.shape[0], program.config.compute.unroll
        perm, keys = epoch_order(program, n, epoch)
        groups = (n // program.config.batch_size) // unroll
        state, losses = run_groups(program, state, images, labels, perm, keys, 0, groups)
        state, rest = run_tail(program, state, images, labels, perm, keys, groups * unroll)
        return state, jnp.concatenate([losses[: groups * unroll], rest])

    return program.jit(epoch_fn, donate_argnums=0)


def run_groups(program: Program, state, images, labels, perm, keys, start, groups):
    """``groups`` x ``unroll`` full-batch steps from step ``start``, ``groups`` a traced
    count (a while loop), so one program runs calls of any length; returns the state
    and a loss per step, at the front of a buffer of one slot per full batch."""
    batch_size, unroll = program.config.batch_size, program.config.compute.unroll
    full = images.shape[0] // batch_size

    def body(group, carry):
        state, losses = carry
        for j in range(unroll):  # the scan's unroll, as copies of the step
            step = start + group * unroll + j
            idx = jax.lax.dynamic_slice_in_dim(perm, step * batch_size, batch_size)
            state, loss = train_step(program, state, (images[idx], labels[idx]), keys[step])
            losses = losses.at[group * unroll + j].set(loss)
        return state, losses

    return jax.lax.fori_loop(0, groups, body, (state, jnp.zeros((full,), jnp.float32)))


@dataclasses.dataclass
class ChunkedEpoch:
    """An epoch as a few compiled calls of about ``seconds`` each, then a tail.

    The host waits for each call, so a progress bar moves and Ctrl-C takes effect
    between calls, seconds apart, instead of once per epoch. The calls' lengths
    follow the measured time per step (the first epoch starts with a twentieth
    of an epoch); each step computes exactly what it computes in the one-program
    epoch (same order, keys, ops), so where the calls split an epoch changes no bit.
    ``seconds=0`` runs every full batch in one call.
    """

    order: Callable  # (epoch) -> (perm, keys)
    chunk: Callable | None  # (state, images, labels, perm, keys, start, groups) -> (state, losses)
    tail: Callable | None  # (state, images, labels, perm, keys) -> (state, losses)
    groups: int  # groups of ``unroll`` full-batch steps the chunk calls run
    unroll: int
    steps: int  # steps per epoch, partial batch included
    seconds: float
    compile_seconds: float = 0.0
    step_seconds: float | None = None  # measured, kept across epochs

    def next_groups(self, queued: int) -> int:
        """Groups for the next call, ``queued`` groups into the epoch."""
        left = self.groups - queued
        if self.seconds <= 0:
            return left
        if self.step_seconds is None:
            return min(left, max(1, self.groups // 20))
        return min(left, max(1, round(self.seconds / (self.step_seconds * self.unroll))))

    def calls(self, initial, images, labels, epoch):
        """Yield ``(state, losses of a call, steps done)`` as each call finishes.

        The next call is queued before the host waits for the current one, so the
        device never idles on the host; the state yielded with a call's losses is
        the newest queued one (the epoch's result once the last call is yielded).
        """
        perm, keys = self.order(epoch)
        done, pending, last = 0, None, time.perf_counter()
        for state, losses, count in self._launch(initial, images, labels, perm, keys):
            if pending is not None:
                finished, last = self._wait(pending, last)
                done += len(finished)
                yield state, finished, done
            pending = (losses, count)
        finished, last = self._wait(pending, last)
        yield state, finished, done + len(finished)

    def _launch(self, state, images, labels, perm, keys):
        """Queue the calls one at a time, each sized when it is queued."""
        queued = 0
        while queued < self.groups:
            groups = self.next_groups(queued)
            start = queued * self.unroll
            state, losses = self.chunk(state, images, labels, perm, keys, start, groups)
            queued += groups
            yield state, losses, groups * self.unroll
        if self.tail is not None:
            state, losses = self.tail(state, images, labels, perm, keys)
            yield state, losses, None

    def _wait(self, item, last: float) -> tuple[np.ndarray, float]:
        """The call's losses once it is done, and the time per step it took."""
        losses, count = item
        losses = np.asarray(losses)  # waits for the call
        now = time.perf_counter()
        if count is not None:
            losses = losses[:count]
            self.step_seconds = (now - last) / count
        return losses, now


def make_chunked_epoch(program: Program, state, images, labels) -> ChunkedEpoch:
    """The :class:`ChunkedEpoch` of ``program`` over these arrays, compiled."""
    n, batch_size = images.shape[0], program.config.batch_size
    unroll = program.config.compute.unroll
    groups = (n // batch_size) // unroll
    t0 = time.perf_counter()
    perm, keys = jax.eval_shape(lambda: epoch_order(program, n, 0))
    order = program.jit(lambda epoch: epoch_order(program, n, epoch))
    programs = {"order": (order, (0,), {"n": n})}
    if groups:

        def chunk_fn(state, images, labels, perm, keys, start, count):
            if program.config.progress_seconds <= 0:  # one call: a static trip count
                count = groups
            return run_groups(program, state, images, labels, perm, keys, start, count)

        chunk = program.jit(chunk_fn, donate_argnums=0)
        args = (state, images, labels, perm, keys, 0, 1)
        programs["chunk"] = (chunk, args, {"groups": groups})
    tail_start = groups * unroll
    if tail_start < n // batch_size or n % batch_size:

        def tail_fn(state, images, labels, perm, keys):
            return run_tail(program, state, images, labels, perm, keys, tail_start)

        tail = program.jit(tail_fn, donate_argnums=0)
        args = (state, images, labels, perm, keys)
        programs["tail"] = (tail, args, {"start": tail_start})
    compiled = program.compile_all(programs)
    order, chunk, tail = compiled["order"], compiled.get("chunk"), compiled.get("tail")
    steps = -(-n // batch_size)
    elapsed = time.perf_counter() - t0
    seconds = program.config.progress_seconds
    return ChunkedEpoch(order, chunk, tail, groups, unroll, steps, seconds, elapsed)


def make_eval_fn(program: Program) -> Callable:
    """``eval_fn(params, images, labels) -> (accuracy, mean loss, predicted classes)``,
    one jit. The classes (int32, one per image) draw the run's prediction grid, which
    then needs no program of its own (0.4 s of a warm inception run's start-up)."""
    batch_size = program.config.eval_batch_size

    def eval_fn(params, images, labels):
        n = images.shape[0]
        steps = -(-n // batch_size)
        pad = steps * batch_size - n
        images = jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
        labels = jnp.pad(labels, (0, pad))
        valid = jnp.arange(steps * batch_size) < n

        def body(carry, xs):
            x, y, v = xs
            out = program.apply(params, x, None)
            correct = jnp.sum((out.argmax(axis=1) == y) & v)
            per_example = jax.vmap(lambda o, t: seed_loss(o[None], t[None], program.config.loss))
            loss = jnp.sum(jnp.where(v, per_example(out, y), 0.0))
            return (carry[0] + correct, carry[1] + loss), out.argmax(axis=1).astype(jnp.int32)

        shape = (steps, batch_size)
        xs = (
            images.reshape(*shape, *images.shape[1:]),
            labels.reshape(shape),
            valid.reshape(shape),
        )
        (correct, loss), predicted = jax.lax.scan(body, (jnp.int32(0), jnp.float32(0)), xs)
        return correct / n, loss / n, predicted.reshape(-1)[:n]

    return program.jit(eval_fn)


def predict(program: Program, params: nnx.State, images: np.ndarray) -> np.ndarray:
    """Predicted classes for a few host images (for the prediction grid)."""
    return np.asarray(program.jit(program.apply)(params, jnp.asarray(images), None).argmax(axis=1))


def timed_compile(program: Program, name: str, fn: Callable, *args) -> tuple[Callable, float]:
    """``program.compile(name, fn, *args)``; returns (compiled, seconds)."""
    start = time.perf_counter()
    compiled = program.compile(name, fn, *args)
    return compiled, time.perf_counter() - start
