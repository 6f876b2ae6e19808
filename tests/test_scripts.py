"""Every script starts: ``--help`` exits 0 (catches import errors and shadowed modules)."""

import os
import sys

import pytest

from tests.helpers import ENV, ROOT, make_idx_dir, run_python, run_script

SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_no_script_shadows_the_standard_library():
    names = {p.stem for p in SCRIPTS}
    assert not names & set(sys.stdlib_module_names), "scripts/ leads sys.path when they run"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script):
    if script.name in {"parity_report.py", "compare_torch.py"}:
        pytest.importorskip("torch")
    out = run_script(script.name, "--help", timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    assert "usage:" in out.stdout


def test_compilation_cache_keeps_the_small_init_programs(tmp_path):
    """The CLI's cache holds the ~40 ms compiles of a model's eager init ops.

    Under a threshold like JAX's default (1 s; this test failed with 0.5 s) none
    of them is written, and every run pays for them again (about 4 s of an
    inception run's start on a 2-core CPU).
    """
    code = (
        "from jaxcnn.cli import enable_compilation_cache; enable_compilation_cache(); "
        "from jaxcnn import models; models.create('lenet5')"
    )
    env = {**ENV, "JAXCNN_CACHE_DIR": str(tmp_path / "cache")}
    proc = run_python(code, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    entries = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("jit_")]
    assert len(entries) >= 3, sorted(p.name for p in (tmp_path / "cache").iterdir())


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("profile_models.py", ["--models", "mlp", "--steps", "0"], "--steps must be at least 1"),
        ("profile_models.py", ["--model", "mlp", "vgg"], "unknown model 'vgg'"),
        (
            "profile_models.py",
            ["--models", "mlp", "--out", "{blocker}/p"],
            "cannot create the --out",
        ),
        ("bench.py", ["--models", "mlp", "--train-limit", "0"], "--train-limit must be at least 1"),
    ],
)
def test_script_errors_are_one_line_before_any_work(script, args, message, tmp_path):
    """Each used to end in a traceback (ZeroDivisionError, FileNotFoundError) or,
    for bench's --train-limit 0, to run on all the data."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    args = [a.format(blocker=blocker) for a in args]
    if "--out" not in args:  # a regression must not write into the repository's results/
        args += ["--out", str(tmp_path / "out")]
    out = run_script(script, *args, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_import_flax_keeps_ipython_out_and_importable_after():
    """The scripts import flax without IPython (0.4-0.7 s of a short run where it is
    installed); a later ``import IPython`` in the same process still works."""
    code = (
        "import importlib.util, sys\n"
        "from jaxcnn.cli import import_flax\n"
        "import_flax()\n"
        "assert 'flax.nnx' in sys.modules\n"
        "assert 'IPython' not in sys.modules, 'IPython was imported'\n"
        "if importlib.util.find_spec('IPython') is not None:\n"
        "    import IPython\n"
        "    assert IPython.get_ipython() is None\n"
        "print('ok')\n"
    )
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_train_py_never_imports_ipython(tmp_path):
    """The whole trainer, not only :func:`import_flax`: its ``--model`` help once
    imported the models (and so flax, and IPython) before flax was imported with
    IPython hidden. A stand-in IPython first on the path records any import of it,
    then fails as a missing one does."""
    fake = tmp_path / "fake" / "IPython"
    fake.mkdir(parents=True)
    marker = tmp_path / "ipython-was-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError\n")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make_idx_dir(data_dir, n=40)
    env = {**ENV, "PYTHONPATH": f"{fake.parent}{os.pathsep}{ENV['PYTHONPATH']}"}
    args = ["--model", "simple_cnn", "--dataset", "mnist", "--data-dir", str(data_dir)]
    args += ["--epochs", "1", "--batch-size", "20", "--no-progress"]
    out = run_script("train.py", *args, "--workdir", str(tmp_path / "run"), env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not marker.exists(), "scripts/train.py imported IPython"


@pytest.mark.parametrize("tuned", [True, False])
def test_tune_malloc_keeps_freed_blocks_for_the_next_call(tuned):
    """After ``tune_malloc`` (what ``run_main`` does first) a freed 64 MB block is reused
    without page faults, as XLA's per-call buffers are; ``JAXCNN_MALLOC=system`` keeps
    glibc's defaults, under which every new block is faulted in again."""
    code = (
        "import resource, numpy as np\n"
        "from jaxcnn.cli import tune_malloc\n"
        "print(tune_malloc())\n"
        "faults = []\n"
        "for _ in range(3):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    block = np.ones(16 << 20, np.float32)  # 64 MB, written: every page touched\n"
        "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "    del block\n"
        "print(faults[-1])\n"
    )
    env = {**ENV, "JAXCNN_MALLOC": "" if tuned else "system"}
    proc = run_python(code, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    applied, faults = proc.stdout.split()
    assert applied == str(tuned)
    # a fresh mapping faults in every page: 16,384 of 4 KB, or ~550 where numpy asks
    # for huge pages (transparent huge pages on madvise); the same heap memory, none
    if tuned:
        assert int(faults) < 32
    else:
        assert int(faults) > 256


def test_tune_malloc_leaves_xla_threads_their_own_arenas():
    """XLA's worker threads allocate from arenas of their own after ``tune_malloc``.

    Eigen's contractions take their packing buffers (1.9 and 13 MB a step for cifar_cnn)
    from malloc on those threads; squeezed into the main thread's one arena
    (``M_ARENA_MAX=1``) they waited on its lock: 1.1-1.2 million futex calls in a 5-epoch
    cifar_cnn run, against 22,000, and resnet's epochs took 1.3x as long. glibc's
    ``malloc_info`` lists one heap per arena.
    """
    code = (
        "import ctypes, tempfile\n"
        "from jaxcnn.cli import tune_malloc\n"
        "assert tune_malloc()\n"
        "import jax, jax.numpy as jnp\n"
        "x = jnp.ones((1024, 1024))\n"
        "for _ in range(3):\n"
        "    jax.block_until_ready(jax.jit(lambda a: a @ a)(x))\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.fopen.restype = ctypes.c_void_p\n"
        "with tempfile.NamedTemporaryFile('r') as out:\n"
        "    f = libc.fopen(out.name.encode(), b'w')\n"
        "    libc.malloc_info(0, ctypes.c_void_p(f))\n"
        "    libc.fclose(ctypes.c_void_p(f))\n"
        "    print(out.read().count('<heap nr='))\n"
    )
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) > 1, "every thread allocated from one arena"
