"""The trainer and the CLI, end to end on CPU: determinism, resume after SIGKILL,
divergence, real Fashion-MNIST, and one-line errors with non-zero exits."""

import json
import re
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

from jaxcnn import UserError, checkpoint, compute, data, experiment, report, train
from jaxcnn.checkpoint import Checkpoints
from tests.helpers import ENV, ROOT, make_idx_dir, run_script


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("idx")
    make_idx_dir(directory, n=300)
    return directory


def small_config(idx_dir, **kw):
    base = {"epochs": 2, "batch_size": 32, "data_dir": str(idx_dir), "seed": 3}
    return train.get_config("basic_cnn", "mnist", **{**base, **kw})


def final_params(workdir, config):
    _, state = train.create_program(config)
    return jax.tree.leaves(Checkpoints(workdir).restore(state).params)


def assert_same_params(workdir_a, workdir_b, config):
    pairs = zip(final_params(workdir_a, config), final_params(workdir_b, config), strict=True)
    for x, y in pairs:
        np.testing.assert_array_equal(x, y)


def test_same_seed_same_metrics(idx_dir, tmp_path):
    config = small_config(idx_dir)
    a = experiment.train_and_evaluate(config, tmp_path / "a", progress=False)
    b = experiment.train_and_evaluate(config, tmp_path / "b", progress=False)
    assert a["test_accuracy"] == b["test_accuracy"]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert_same_params(tmp_path / "a", tmp_path / "b", config)
    experiment.train_and_evaluate(small_config(idx_dir, seed=4), tmp_path / "c", progress=False)
    assert losses(tmp_path / "c") != losses(tmp_path / "a"), "the seed must matter"


def losses(workdir):
    rows = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(r)["train_loss"] for r in rows]


def test_dropout_model_is_deterministic(idx_dir, tmp_path):
    config = train.get_config("convnet", "mnist", epochs=1, batch_size=50, data_dir=str(idx_dir))
    experiment.train_and_evaluate(config, tmp_path / "a", progress=False)
    experiment.train_and_evaluate(config, tmp_path / "b", progress=False)
    assert_same_params(tmp_path / "a", tmp_path / "b", config)


def test_resume_after_sigkill_matches_uninterrupted(idx_dir, tmp_path):
    epochs = 4
    args = [
        "--model",
        "basic_cnn",
        "--dataset",
        "mnist",
        "--data-dir",
        str(idx_dir),
        "--epochs",
        str(epochs),
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--no-progress",
    ]
    reference = tmp_path / "reference"
    assert run_script("train.py", *args, "--workdir", str(reference)).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/train.py"), *args, "--workdir", str(killed)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "1").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = Checkpoints(killed)
    latest = ckpts.latest_epoch()
    assert latest is not None and latest < epochs, "the kill should land mid-run"
    # The kill may land between orbax's rename and the manifest: that one is unfinished.
    done, unfinished = ckpts.newest_intact()

    resumed = run_script("train.py", *args, "--workdir", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    if done is None:
        assert "resuming" not in resumed.stdout
    else:
        assert f"resuming basic_cnn from epoch {done}" in resumed.stdout
    for epoch in unfinished:
        assert f"warning: the checkpoint of epoch {epoch} is damaged (it has no " in resumed.stderr
    config = small_config(idx_dir, epochs=epochs, batch_size=16)
    assert_same_params(reference, killed, config)
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))


def test_a_kill_right_after_a_checkpoint_loses_no_metrics_row(idx_dir, tmp_path, monkeypatch):
    """Killed the moment epoch 2's checkpoint is on disk, then resumed: rows 1, 2, 3.

    The checkpoint used to be written before the epoch's metrics row; a kill
    between the two (the SIGKILL test above once landed there under load) left
    epoch 2 resumable but its row gone for good.
    """
    save = Checkpoints.save

    def save_then_die(self, epoch, state):
        save(self, epoch, state)
        if epoch == 2:
            raise KeyboardInterrupt("killed after the checkpoint")

    config = small_config(idx_dir, epochs=3)
    monkeypatch.setattr(Checkpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        experiment.train_and_evaluate(config, tmp_path / "run", progress=False)
    monkeypatch.setattr(Checkpoints, "save", save)
    assert Checkpoints(tmp_path / "run").latest_epoch() == 2
    experiment.train_and_evaluate(config, tmp_path / "run", progress=False, resume=True)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(idx_dir, tmp_path):
    config = small_config(idx_dir, lr=1e38, epochs=3)  # overflows float32 in one step
    with pytest.raises(experiment.NonFiniteLossError, match="loss became") as err:
        experiment.train_and_evaluate(config, tmp_path, progress=False)
    bad = int(re.search(r"of epoch (\d+);", str(err.value)).group(1))
    # the epochs before the bad one are checkpointed, the bad one is not
    assert Checkpoints(tmp_path).latest_epoch() == (bad - 1 if bad > 1 else None)
    if bad == 1:
        assert "no checkpoint was written before it" in str(err.value)


def test_divergence_names_the_newest_intact_checkpoint(tmp_path):
    """Not "epoch - 1": the one that is there and intact (epoch 2 when 3 is damaged)."""
    ckpts = Checkpoints(tmp_path)
    for epoch in (1, 2, 3):
        ckpts.save(epoch, {"w": np.full(3, float(epoch))})
    (ckpts.path(3) / checkpoint.MANIFEST).unlink()
    run = types.SimpleNamespace(ckpts=ckpts)
    losses = np.array([1.0, 2.0, np.inf, np.nan])
    with pytest.raises(experiment.NonFiniteLossError) as err:
        experiment.check_finite(run, losses, first_step=8, epoch=4)
    assert str(err.value).startswith("loss became inf at step 11 of epoch 4; stopped, the ")
    assert "checkpoint of epoch 2 in" in str(err.value)
    experiment.check_finite(run, losses[:2], first_step=0, epoch=4)  # finite: no error


def test_existing_run_is_not_overwritten(idx_dir, tmp_path):
    config = small_config(idx_dir, epochs=1)
    experiment.train_and_evaluate(config, tmp_path, progress=False)
    with pytest.raises(experiment.UserError, match="already holds a run.*--resume"):
        experiment.train_and_evaluate(config, tmp_path, progress=False)
    with pytest.raises(experiment.UserError, match="--resume: this run's lr differ"):
        experiment.train_and_evaluate(
            small_config(idx_dir, epochs=1, lr=0.5), tmp_path, resume=True, progress=False
        )


@pytest.mark.skipif(
    not data.DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist"
)
def test_real_fashion_mnist_cli_train_then_evaluate(tmp_path):
    workdir = tmp_path / "run"
    out = run_script(
        "train.py",
        "--model",
        "basic_cnn",
        "--dataset",
        "fashion_mnist",
        "--epochs",
        "1",
        "--train-limit",
        "3000",
        "--workdir",
        str(workdir),
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["data_source"] == str(data.DEBIAN_FASHION_MNIST)
    assert 0.55 < summary["test_accuracy"] <= 1.0  # chance is 0.10
    assert {"compile_seconds", "epoch_seconds", "device", "jax"} <= set(summary)
    for name in ["metrics.jsonl", "config.json", "curves.png", "predictions.png"]:
        assert (workdir / name).is_file(), name
    ev = run_script(
        "evaluate.py",
        "--model",
        "basic_cnn",
        "--checkpoint",
        str(workdir),
        "--dataset",
        "fashion_mnist",
        "--json",
    )
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout.strip().splitlines()[-1])["test_accuracy"] == pytest.approx(
        summary["test_accuracy"], abs=1e-6
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "vgg", "--dataset", "mnist"], "unknown model 'vgg'; choose one of"),
        (["--model", "basic_cnn", "--dataset", "svhn"], "unknown dataset 'svhn'"),
        (
            ["--model", "basic_cnn", "--dataset", "mnist", "--data-dir", "/nonexistent"],
            "is not a directory",
        ),
        (["--model", "basic_cnn", "--dataset", "mnist", "--lr", "-1"], "--lr must be a positive"),
        (
            ["--model", "basic_cnn", "--dataset", "mnist", "--train-limit", "0"],
            "--train-limit must be at least 1",
        ),
        (
            ["--model", "basic_cnn", "--dataset", "mnist", "--xla-option", "xla_no_such=1"],
            "--xla-option: No such compile option: 'xla_no_such'",
        ),
        (
            ["--model", "basic_cnn", "--dataset", "mnist", "--init-from", "/no/such.pt"],
            "does not exist",
        ),
        pytest.param(
            ["--model", "basic_cnn", "--dataset", "mnist", "--conv", "pallas_wgrad"],
            "'pallas_wgrad' is a GPU kernel and this backend is cpu; choose another --conv",
            marks=pytest.mark.skipif(jax.default_backend() == "gpu", reason="runs on a GPU"),
        ),
    ],
)
def test_cli_errors_are_one_line(args, message, tmp_path):
    out = run_script("train.py", *args, "--workdir", str(tmp_path / "w"), timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_output_folders_that_cannot_be_made_stop_before_any_work(idx_dir, tmp_path):
    """A --workdir, --profile or --dump-hlo under a regular file is one line and exit 2,
    before anything is written. --profile used to fail only after the last epoch,
    with a traceback and no summary.json."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = run_script(
        "train.py", "--model", "basic_cnn", "--dataset", "mnist", "--data-dir", str(idx_dir),
        "--workdir", str(blocker / "w"), timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (
        out.stderr.strip() == f"error: cannot create the workdir '{blocker / 'w'}': Not a directory"
    )
    config = small_config(idx_dir, epochs=1)
    workdir = tmp_path / "w"
    for flag, kw in (("--profile", "profile_dir"), ("--dump-hlo", "hlo_dir")):
        with pytest.raises(UserError, match=f"cannot create the {flag} folder"):
            experiment.train_and_evaluate(config, workdir, progress=False, **{kw: blocker / "sub"})
        assert not workdir.exists()


def test_ensure_dir_says_when_a_folder_is_not_writable(tmp_path, monkeypatch):
    from jaxcnn import report

    assert report.ensure_dir(tmp_path / "a" / "b", "x").is_dir()
    monkeypatch.setattr(report.os, "access", lambda path, mode: False)  # root can write anywhere
    with pytest.raises(UserError, match="cannot write into the --out folder .*permission denied"):
        report.ensure_dir(tmp_path, "--out folder")


def test_xla_options_reach_the_training_and_eval_programs(tmp_path):
    """``--xla-option`` compiles the epoch and eval programs with it: shown with
    ``xla_dump_to``, which makes XLA write each program it compiles there."""
    dump = tmp_path / "hlo"
    options = compute.parse_xla_options([f"xla_dump_to={dump}"])
    config = train.get_config("basic_cnn", "mnist", batch_size=8, xla_options=options)
    program, state = train.create_program(config)
    images, labels = np.zeros((16, 28, 28, 1), np.uint8), np.zeros(16, np.int32)
    train.make_epoch_fn(program).lower(state, images, labels, 0).compile()
    train.make_eval_fn(program).lower(state.params, images, labels).compile()
    dumped = {p.name for p in dump.iterdir()}
    names = " ".join(dumped)
    assert "jit_epoch_fn" in names and "jit_eval_fn" in names
    # without the option the same program is compiled without it: nothing new is dumped
    plain, _ = train.create_program(train.get_config("basic_cnn", "mnist", batch_size=8))
    assert plain.config.compute.xla_options == ()
    train.make_epoch_fn(plain).lower(state, images, labels, 0).compile()
    assert {p.name for p in dump.iterdir()} == dumped


def test_parse_xla_options():
    items = ["xla_a=TRUE", "xla_b=3", "xla_c=FUSION,WHILE", "xla_a=false"]
    assert compute.parse_xla_options(items) == (
        ("xla_a", False),  # XLA wants a real bool; the last of a repeated name wins
        ("xla_b", "3"),
        ("xla_c", "FUSION,WHILE"),
    )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("xla_cpu_enable_fast_math=maybe", "'maybe' is not a valid bool value"),
        ("xla_gpu_enable_command_buffer=FUSION,LOOPS", "is not a valid enum value"),
        ("fast_math=1", "expected xla_NAME=VALUE"),
        ("xla_cpu_enable_fast_math", "expected xla_NAME=VALUE"),
    ],
)
def test_bad_xla_options_are_one_line_errors(item, message):
    with pytest.raises(UserError, match=message) as info:
        train.get_config("basic_cnn", "mnist", xla_options=compute.parse_xla_options([item]))
    assert "\n" not in str(info.value)


def test_no_data_anywhere_is_one_sentence_and_leaves_no_workdir(tmp_path):
    """MNIST with nothing prepared, cached or downloadable: say so, exit 2, write nothing."""
    env = {**ENV, "TFDS_DATA_DIR": str(tmp_path / "tfds"), "JAXCNN_DATA_DIR": str(tmp_path / "c")}
    out = run_script(
        "train.py", "--model", "basic_cnn", "--dataset", "mnist", "--workdir", str(tmp_path / "w"),
        env=env,
    )  # fmt: skip
    assert out.returncode == 2
    error = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1
    assert error[0].startswith(
        "error: dataset 'mnist' could not be downloaded (tried "
        "http://127.0.0.1:9/train-images-idx3-ubyte.gz: "
    )
    assert f"cached in '{tmp_path / 'c' / 'mnist'}'" in error[0] and "--data-dir" in error[0]
    assert "dataset-fashion-mnist" in error[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("seconds", "limit", "unroll"),
    [(1e-9, None, 1), (0.05, None, 1), (0, None, 1), (1e-9, 288, 1), (0, 288, 2), (1e-9, None, 2)],
)
def test_a_chunked_epoch_computes_what_one_program_does(idx_dir, seconds, limit, unroll):
    """Bit for bit, wherever the calls split the epoch (one step per call, timed calls,
    one call; with and without a partial batch; unrolled): the calls and the tail run
    the same steps with the same keys as the one-program epoch."""
    config = small_config(idx_dir, progress_seconds=seconds, train_limit=limit, unroll=unroll)
    program, state = train.create_program(config)
    split, _ = experiment.load_data(config, program.input_shape)
    images, labels = jax.device_put(split.images), jax.device_put(split.labels)
    chunked = train.make_chunked_epoch(program, state, images, labels)
    parts, done = [], []
    for call in chunked.calls(state, images, labels, 2):
        new_state, losses, steps = call
        parts.append(losses)
        done.append(steps)
    assert done[-1] == chunked.steps == -(-len(labels) // config.batch_size)
    full = len(labels) // config.batch_size
    if seconds == 0:
        assert len(done) == 1 + (chunked.tail is not None)
    elif seconds < 1e-6:  # one group a call
        assert len(done) == full // unroll + (chunked.tail is not None)
    _, fresh = train.create_program(config)
    whole_state, whole_losses = train.make_epoch_fn(program)(fresh, images, labels, 2)
    np.testing.assert_array_equal(np.concatenate(parts), np.asarray(whole_losses))
    for x, y in zip(jax.tree.leaves(new_state), jax.tree.leaves(whole_state), strict=True):
        np.testing.assert_array_equal(x, y)


def test_prediction_grid_shows_the_trained_models_classes(idx_dir, tmp_path, monkeypatch):
    """The grid's classes come from the last evaluation, and from their own program on a
    resume with nothing left to train: both are what the final parameters predict."""
    drawn = []
    monkeypatch.setattr(report, "plot_predictions", lambda *a, **k: drawn.append(a[3]))
    config = small_config(idx_dir, epochs=1)
    experiment.train_and_evaluate(config, tmp_path / "run", progress=False)
    experiment.train_and_evaluate(config, tmp_path / "run", progress=False, resume=True)
    program, state = train.create_program(config)
    params = Checkpoints(tmp_path / "run").restore(state).params
    images = data.load("mnist", "test", str(idx_dir)).images[:10]
    want = train.predict(program, params, images)
    assert len(drawn) == 2 and len(set(want.tolist())) > 1, "a grid of one class proves little"
    for predicted in drawn:
        np.testing.assert_array_equal(predicted, want)
