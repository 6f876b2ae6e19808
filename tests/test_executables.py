"""The compiled-program cache (jaxcnn.executables): found without tracing, never wrong."""

import json
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import executables, train
from jaxcnn.executables import Executables

from .helpers import ENV, make_idx_dir, run_script


def counted(calls: list):
    """A jitted function that records each time it is traced."""

    def f(x, y):
        calls.append(x.shape)
        return jnp.tanh(x @ y).sum(axis=0)

    return jax.jit(f)


def test_a_stored_program_is_loaded_without_tracing_and_computes_the_same(tmp_path):
    cache, calls = Executables(tmp_path), []
    args = (jnp.ones((8, 4)), jnp.arange(12.0).reshape(4, 3))
    first = cache.compile(counted(calls), args, name="f", context={"lr": 0.1})
    second = cache.compile(counted(calls), args, name="f", context={"lr": 0.1})
    assert len(calls) == 1  # the second came from the file
    assert len(list(tmp_path.glob(f"*{executables.SUFFIX}"))) == 1
    np.testing.assert_array_equal(np.asarray(first(*args)), np.asarray(second(*args)))


@pytest.mark.parametrize(
    "change",
    [
        {"name": "g"},
        {"context": {"lr": 0.2}},
        {"args": (jnp.ones((9, 4)), jnp.ones((4, 3)))},
        {"args": (jnp.ones((8, 4), jnp.bfloat16), jnp.ones((4, 3)))},
        {"args": ((jnp.ones((8, 4)),), jnp.ones((4, 3)))},  # another tree
    ],
)
def test_anything_that_decides_the_program_changes_its_key(change):
    base = {"name": "f", "context": {"lr": 0.1}, "args": (jnp.ones((8, 4)), jnp.ones((4, 3)))}
    same = executables.key(**base)
    assert executables.key(**base) == same
    assert executables.key(**{**base, **change}) != same


def test_values_do_not_enter_the_key():
    """A resumed run's parameters differ from a fresh run's; its programs are the same."""
    a = executables.key("f", {}, (jnp.zeros((2, 2)), 0))
    assert executables.key("f", {}, (jnp.ones((2, 2)), 7)) == a


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_entry_is_compiled_again_and_replaced(tmp_path, damage):
    cache, calls = Executables(tmp_path), []
    args = (jnp.ones((8, 4)), jnp.ones((4, 3)))
    expected = np.asarray(cache.compile(counted(calls), args, name="f", context={})(*args))
    (path,) = tmp_path.glob(f"*{executables.SUFFIX}")
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 3]
    else:
        raw = bytearray(b"not a program")
    path.write_bytes(bytes(raw))
    compiled = cache.compile(counted(calls), args, name="f", context={})
    assert len(calls) == 2  # compiled again
    np.testing.assert_array_equal(np.asarray(compiled(*args)), expected)
    assert executables.load(path) is not None  # the replacement loads


def test_an_unwritable_directory_warns_and_still_compiles(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache, calls = Executables(blocker / "cache"), []
    args = (jnp.ones((8, 4)), jnp.ones((4, 3)))
    g = jax.jit(lambda x, y: x.sum() + y.sum())
    items = [(counted(calls), args, "f", {}), (g, args, "g", {})]
    compiled = cache.compile_all(items)
    assert np.asarray(compiled[0](*args)).shape == (3,)
    assert np.asarray(compiled[1](*args)).shape == ()
    err = capsys.readouterr().err
    assert err.count("cannot store compiled programs") == 1, err  # one line, not one a program


def test_the_oldest_entries_go_past_the_size_limit(tmp_path):
    args = (jnp.ones((8, 4)), jnp.ones((4, 3)))
    Executables(tmp_path).compile(counted([]), args, name="f", context={})
    (first,) = tmp_path.glob(f"*{executables.SUFFIX}")
    small = Executables(tmp_path, max_bytes=first.stat().st_size + 1)
    small.compile(counted([]), args, name="g", context={})
    (kept,) = tmp_path.glob(f"*{executables.SUFFIX}")
    assert kept != first


def test_the_trainers_programs_are_stored_and_give_the_same_epoch(tmp_path):
    """Chunk, tail, order and evaluation: the loaded programs compute what fresh ones do."""
    config = train.get_config("simple_cnn", "mnist", train_limit=200, progress_seconds=0.5)
    program, state = train.create_program(config, executables=Executables(tmp_path))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (200, 28, 28, 1), np.uint8))
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 10, 200, np.int32))
    results = []
    for _ in range(2):  # the first compiles and stores, the second loads
        epoch = train.make_chunked_epoch(program, state, images, labels)
        copy = jax.tree.map(jnp.copy, state)
        calls = list(epoch.calls(copy, images, labels, 1))
        evaluate = train.make_eval_fn(program)
        evaluate = program.compile("eval", evaluate, state.params, images, labels)
        final = calls[-1][0]
        losses = np.concatenate([c[1] for c in calls])
        results.append([losses, *evaluate(final.params, images, labels), *jax.tree.leaves(final)])
    assert len(list(tmp_path.glob(f"*{executables.SUFFIX}"))) == 4
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_another_dataset_size_gets_its_own_programs(tmp_path):
    """The epoch's order program takes only the epoch; the dataset's size, which it closes
    over, must still tell its programs apart (a 60,000-image run once loaded the
    2,000-image run's order program and stopped at the first call)."""
    config = train.get_config("simple_cnn", "mnist", progress_seconds=0.5)
    program, state = train.create_program(config, executables=Executables(tmp_path))
    for n in (200, 130, 200):
        images = jnp.zeros((n, 28, 28, 1), jnp.uint8)
        labels = jnp.zeros((n,), jnp.int32)
        epoch = train.make_chunked_epoch(program, state, images, labels)
        perm, _ = epoch.order(1)
        assert perm.shape == (n,)
        calls = list(epoch.calls(jax.tree.map(jnp.copy, state), images, labels, 1))
        assert sum(len(c[1]) for c in calls) == -(-n // config.batch_size)


def test_train_py_reuses_them_even_after_the_xla_cache_had_them(tmp_path):
    """An executable that JAX's own cache loaded cannot be stored again (it loses its
    kernels). Run 0 leaves the trainer's programs in the XLA cache only (no stored
    executables); run 1 must then compile afresh to store them, and run 2, which
    loads them, must train the same."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make_idx_dir(data_dir, n=130)
    env = {**ENV, "JAXCNN_CACHE_DIR": str(tmp_path / "xla")}
    warm = (
        "import sys; from jaxcnn.cli import enable_compilation_cache; enable_compilation_cache()\n"
        "from jaxcnn import experiment, train\n"
        "config = train.get_config('simple_cnn', 'mnist', data_dir=sys.argv[1], epochs=1, "
        "batch_size=32)\n"
        "experiment.train_and_evaluate(config, sys.argv[2], progress=False)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", warm, str(data_dir), str(tmp_path / "run0")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "xla" / "executables").exists()
    args = ["--model", "simple_cnn", "--dataset", "mnist", "--data-dir", str(data_dir)]
    args += ["--epochs", "1", "--batch-size", "32", "--no-progress"]
    for i in (1, 2):
        proc = run_script("train.py", *args, "--workdir", str(tmp_path / f"run{i}"), env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        stored = tmp_path / "xla" / "executables"
        assert len(list(stored.glob(f"*{executables.SUFFIX}"))) == 4
        assert len(list(stored.glob(f"*{executables.VALUES_SUFFIX}"))) == 1  # initial state
    rows = []
    for i in range(3):
        row = json.loads((tmp_path / f"run{i}" / "metrics.jsonl").read_text())
        rows.append({k: v for k, v in row.items() if k not in ("seconds", "images_per_second")})
    assert rows[1] == rows[0] and rows[2] == rows[0]


def tree_bytes(tree) -> list[np.ndarray]:
    """Every leaf as a host array, a typed PRNG key as its raw data."""

    def unkey(a):
        return jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a

    return [np.asarray(unkey(leaf)) for leaf in jax.tree.leaves(tree)]


def test_stored_values_are_read_without_computing_and_are_the_same(tmp_path):
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "key": jax.random.key(3), "n": jnp.int32(7)}
    abstract = jax.eval_shape(lambda: tree)
    computed = []
    compute = lambda: computed.append(1) or tree  # noqa: E731
    first = Executables(tmp_path).values("v", {}, abstract, compute)
    second = Executables(tmp_path).values("v", {}, abstract, compute)
    assert computed == [1]  # the second was read
    assert len(list(tmp_path.glob(f"*{executables.VALUES_SUFFIX}"))) == 1
    assert jax.tree.structure(second) == jax.tree.structure(tree)
    assert jnp.issubdtype(second["key"].dtype, jax.dtypes.prng_key)
    for a, b in zip(tree_bytes(first), tree_bytes(second), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


@pytest.mark.parametrize("damage", ["flip", "garbage"])
def test_damaged_values_are_computed_again(tmp_path, damage):
    tree = {"w": jnp.ones((3,))}
    abstract, computed = jax.eval_shape(lambda: tree), []
    compute = lambda: computed.append(1) or tree  # noqa: E731
    Executables(tmp_path).values("v", {}, abstract, compute)
    (path,) = tmp_path.glob(f"*{executables.VALUES_SUFFIX}")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw) if damage == "flip" else b"garbage")
    again = Executables(tmp_path).values("v", {}, abstract, compute)
    assert computed == [1, 1]
    np.testing.assert_array_equal(np.asarray(again["w"]), np.ones(3))


def test_the_initial_state_is_read_back_bit_for_bit(tmp_path):
    """convnet: dropout keys in the rest, Adam's state. Drawn, stored, then read: the
    same bits as the eager draw; and a warm run really reads them (a stored state with
    other values comes back as stored)."""
    config = train.get_config("convnet", "mnist")
    drawn_program, drawn = train.create_program(config)
    expected = tree_bytes((drawn, drawn_program.rest))
    for _ in range(2):  # cold: drawn and stored; warm: read
        program, state = train.create_program(config, executables=Executables(tmp_path))
        assert program.graphdef == drawn_program.graphdef
        assert program.input_shape == drawn_program.input_shape
        for a, b in zip(expected, tree_bytes((state, program.rest)), strict=True):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
    (path,) = tmp_path.glob(f"*{executables.VALUES_SUFFIX}")
    stored = pickle.loads(executables.read(path))
    altered = [(kind, impl, data + 1 if kind == "array" else data) for kind, impl, data in stored]
    Executables(tmp_path).write(path, pickle.dumps(altered))
    _, state = train.create_program(config, executables=Executables(tmp_path))
    first = jax.tree.leaves(state.params)[0]
    np.testing.assert_array_equal(
        np.asarray(first), np.asarray(jax.tree.leaves(drawn.params)[0]) + 1
    )
