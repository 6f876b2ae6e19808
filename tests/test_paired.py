"""The paired A/B timing (``scripts/ab.py``): turns, ratios within a round, errors."""

import pytest

from jaxcnn.lab import paired
from tests.helpers import run_script


def test_alternate_rotates_the_order_and_times_every_call():
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = paired.alternate(fns, rounds=3)
    assert order[:3] == ["a", "b", "c"]  # the warm-up calls
    assert order[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(ts) == 3 and min(ts) >= 0 for ts in times.values())


def test_speedups_are_medians_of_ratios_within_a_round():
    # the machine slows down 2x in the last round: the paired ratios do not move,
    # the ratio of medians would (1.0 / 1.1 against 0.5)
    times = {"base": [1.0, 1.0, 2.0], "fast": [0.5, 0.5, 1.0], "slow": [2.0, 2.2, 4.0]}
    assert paired.speedups(times) == pytest.approx({"base": 1.0, "fast": 2.0, "slow": 0.5})


def test_two_variants_of_a_model_time_the_same_steps():
    table = paired.run(["mlp"], {"a": {"fuse": False}, "b": {"unroll": 2}}, steps=2, rounds=2)
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    assert [(m.strip(), v.strip()) for m, v, *_ in rows] == [("mlp", "a"), ("mlp", "b")]
    assert float(rows[0][3]) == 1.0 and float(rows[1][2]) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variant", "a:fuse=0"], "give two --variant or more"),
        (["--models", "vgg", "--variant", "a:fuse=0", "--variant", "b:fuse=1"], "unknown model"),
        (["--variant", "a:fuse=0", "--variant", "b:speed=9"], "unknown option 'speed'"),
    ],
)
def test_script_errors_are_one_line(args, message):
    out = run_script("ab.py", *args, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
