"""What a person looks at: the prediction grid names classes, the curves count epochs."""

import numpy as np
import pytest

from jaxcnn import data, report
from tests.helpers import make_idx_dir, run_script


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots save, kept open for the test to read."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda self, *a, **k: (figures.append(self), save(self, *a, **k))
    )
    return figures


def test_prediction_titles_use_class_names(tmp_path, drawn):
    images = np.zeros((3, 28, 28, 1), np.uint8)
    names = data.CLASS_NAMES["fashion_mnist"]
    assert report.plot_predictions(tmp_path / "p.png", images, [0, 8, 9], [0, 4, 9], "t", names)
    titles = [ax.get_title() for ax in drawn[0].axes if ax.get_title()]
    assert titles == ["T-shirt/top", "Coat\n(true: Bag)", "Ankle boot"]
    assert (tmp_path / "p.png").stat().st_size > 0
    assert data.CLASS_NAMES["cifar10"][0] == "airplane" and len(data.CLASS_NAMES["cifar10"]) == 10


@pytest.mark.parametrize("epochs", [1, 3, 12])
def test_curves_have_whole_epoch_ticks(tmp_path, drawn, epochs):
    rows = [{"epoch": e, "train_loss": 1 / e, "test_accuracy": 0.5} for e in range(1, epochs + 1)]
    assert report.plot_curves(tmp_path / "c.png", rows, "t")
    for ax in drawn[0].axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert low < 1 and high > epochs  # a single epoch is not squeezed onto an edge


def test_the_default_workdir_of_a_second_run_gets_a_fresh_name(tmp_path):
    """The quickstart twice: the second run goes to runs/<model>-<dataset>-2 and says so
    on its first line; --resume keeps the first; an explicit --workdir is still refused."""
    (tmp_path / "idx").mkdir()
    make_idx_dir(tmp_path / "idx", n=32)
    args = ["--model", "mlp", "--dataset", "mnist", "--data-dir", str(tmp_path / "idx"),
            "--epochs", "1", "--batch-size", "16", "--no-progress"]  # fmt: skip
    first = run_script("train.py", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_script("train.py", *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.splitlines()[0] == (
        "'runs/mlp-mnist' holds a run; this one goes to 'runs/mlp-mnist-2' "
        "(--resume continues that one)"
    )
    assert (tmp_path / "runs/mlp-mnist/summary.json").exists()
    assert (tmp_path / "runs/mlp-mnist-2/summary.json").exists()
    again = run_script("train.py", *args, "--workdir", "runs/mlp-mnist", cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr
