"""Compiled programs kept on disk, found without tracing them again.

JAX's persistent compilation cache keys a program by its lowered StableHLO, so a
warm run still traces and lowers every program before the cache is even asked:
3.4 of the 9.5 s that a warm 1-epoch inception run on 2,000 images took on a
2-core CPU (2026-12-06), where loading the executable took 0.3 s. This cache
keys a program instead by everything that decides it (the caller's name for it
and the run's config, the arguments' tree, shapes, dtypes and shardings,
jaxcnn's own source, the versions of the libraries, JAX's settings and the
machine) and stores the executable XLA built
(``jax.experimental.serialize_executable``).

An entry is written from a fresh compile only: an executable that the
persistent cache loaded re-serializes without its kernels (XLA:CPU, jaxlib
0.10.2: "Function ... not found" at the first call), so a miss compiles with
that cache off. Entries are checked against a sha256 before loading; a damaged
or unreadable one is a miss, replaced. Like JAX's own cache, an entry is
trusted code: loading one runs what it holds, so the directory must be the
user's own.

The same directory keeps the values a run computes eagerly before training, under
the same key (:meth:`Executables.values`): the initial state, whose ~70 small
random draws each trace and fetch a program of their own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pickle
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

MAGIC = b"jaxcnn-executable-1\n"
SUFFIX = ".exe.bin"
VALUES_SUFFIX = ".values.bin"


@dataclasses.dataclass(frozen=True)
class Executables:
    """A directory of compiled programs; the oldest go once it holds over ``max_bytes``."""

    directory: Path
    max_bytes: int = 512 * 2**20

    def compile(self, jitted, args: tuple, *, name: str, context: dict[str, Any]):
        """``jitted.lower(*args).compile()``, or the executable stored for it.

        ``jitted`` must take every argument as traced (no static arguments):
        arguments enter the key by type, shape, dtype and sharding, not value.
        ``context`` holds whatever else decides the program (the run's config).
        """
        return self.compile_all([(jitted, args, name, context)])[0]

    def compile_all(self, programs: list[tuple]) -> list:
        """:meth:`compile` of each ``(jitted, args, name, context)``, the stored ones
        loaded side by side (loading releases the GIL: inception's chunk and tail took
        0.3 s each); tracing and compiling stay in this thread, whose JAX settings
        (context managers included) the keys were made under."""
        paths = [self.directory / f"{key(n, c, a)}{SUFFIX}" for _, a, n, c in programs]
        with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
            loaded = list(pool.map(load, paths))
        compiled, problems = [], set()
        for (jitted, args, _, _), path, found in zip(programs, paths, loaded, strict=True):
            if found is None:
                with fresh_compiles():
                    found = jitted.lower(*args).compile()
                problems.add(self.store(path, found))
            compiled.append(found)
        problems.discard(None)
        if problems:  # one line for the run, not one per program
            print(f"warning: cannot store compiled programs in '{self.directory}' "
                  f"({'; '.join(sorted(problems))}); they are compiled again next run",
                  file=sys.stderr)  # fmt: skip
        return compiled

    def store(self, path: Path, compiled) -> str | None:
        """Write ``compiled`` atomically; a program that cannot be serialized is simply not
        stored. Returns why the file could not be written, or None."""
        from jax.experimental import serialize_executable

        try:
            payload = pickle.dumps(serialize_executable.serialize(compiled))
        except (ValueError, NotImplementedError, TypeError, pickle.PicklingError):
            return None  # e.g. a program with captured constants: it is compiled each run
        return self.write(path, payload)

    def values(self, name: str, context: dict[str, Any], abstract, compute):
        """``compute()``, a tree of arrays shaped and typed as ``abstract`` (what
        ``jax.eval_shape`` gives), or the values stored for it by an earlier run.

        For values that are a pure function of the key (``abstract`` enters it as
        :meth:`compile`'s arguments do): a warm inception run's initial state took
        0.16-0.24 s this way (its ``eval_shape`` included) where drawing it took 0.6-0.9.
        A stored tree that does not match ``abstract`` leaf for leaf is a miss,
        computed and replaced.
        """
        path = self.directory / f"{key(name, context, (abstract,))}{VALUES_SUFFIX}"
        payload = read(path)
        found = None if payload is None else unpack(payload, abstract)
        if found is not None:
            return found
        computed = compute()
        self.write(path, pickle.dumps(pack(computed)))  # unwritable: compile_all says so
        return computed

    def write(self, path: Path, payload: bytes) -> str | None:
        """``payload`` framed (magic, sha256) and written atomically, then the cache
        trimmed; returns why the file could not be written, or None."""
        temporary = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tmp", delete=False) as f:
                temporary = Path(f.name)
                f.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(temporary, path)
        except OSError as err:
            if temporary is not None:
                temporary.unlink(missing_ok=True)
            return str(err.strerror or err)
        self.evict()
        return None

    def evict(self) -> None:
        """Delete the least recently used entries past ``max_bytes`` (another run may be
        deleting them too: a file gone already is skipped)."""
        sizes = {}
        for path in [*self.directory.glob(f"*{SUFFIX}"), *self.directory.glob(f"*{VALUES_SUFFIX}")]:
            try:
                stat = path.stat()
            except OSError:
                continue
            sizes[path] = (stat.st_mtime, stat.st_size)
        total = sum(size for _, size in sizes.values())
        for path in sorted(sizes, key=lambda p: sizes[p][0])[:-1]:  # the newest stays
            if total <= self.max_bytes:
                break
            total -= sizes[path][1]
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def fresh_compiles():
    """Compile without JAX's persistent cache (module docstring: what it loads cannot be
    stored again). Once that cache has been used, turning it off no longer stops its
    reads; resetting it does, and it starts again at its next use."""
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_enable_compilation_cache
    compilation_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)
        compilation_cache.reset_cache()


def read(path: Path) -> bytes | None:
    """The payload stored at ``path``; None where there is none, or where it is damaged
    (then deleted, so the next run writes it afresh)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    header = len(MAGIC) + 32
    payload = raw[header:]
    if raw[: len(MAGIC)] != MAGIC or hashlib.sha256(payload).digest() != raw[len(MAGIC) : header]:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):  # a read-only cache still serves
        os.utime(path)  # recently used: evicted last
    return payload


def load(path: Path):
    """The executable stored at ``path``, or None where there is none or it is damaged."""
    from jax.experimental import serialize_executable

    payload = read(path)
    if payload is None:
        return None
    try:
        blob, in_tree, out_tree = pickle.loads(payload)
        return serialize_executable.deserialize_and_load(blob, in_tree, out_tree)
    except Exception:  # any failure to load is a miss, then a fresh compile
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def pack(tree) -> list[tuple]:
    """A tree's leaves as host arrays; a typed PRNG key as its raw data and its impl."""
    packed = []
    for leaf in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            impl = str(jax.random.key_impl(leaf))
            packed.append(("key", impl, np.asarray(jax.random.key_data(leaf))))
        else:
            packed.append(("array", None, np.asarray(leaf)))
    return packed


def unpack(payload: bytes, abstract):
    """:func:`pack`'s leaves as ``abstract``'s tree on the default device (one transfer
    for all of them), or None unless every leaf has the abstract one's shape and dtype."""
    leaves, treedef = jax.tree.flatten(abstract)
    try:
        packed = pickle.loads(payload)
        if len(packed) != len(leaves):
            return None
        arrays = jax.device_put([data for _, _, data in packed])
        for i, (kind, impl, _) in enumerate(packed):
            if kind == "key":
                arrays[i] = jax.random.wrap_key_data(arrays[i], impl=impl)
            if arrays[i].shape != leaves[i].shape or arrays[i].dtype != leaves[i].dtype:
                return None
    except Exception:  # an unreadable entry is a miss, like a damaged executable
        return None
    return jax.tree.unflatten(treedef, arrays)


def key(name: str, context: dict[str, Any], args: tuple) -> str:
    """sha256 of everything that decides the compiled program (see the module docstring)."""
    leaves, treedef = jax.tree.flatten(args)
    parts = {
        "name": name,
        "context": context,
        "tree": str(treedef),
        "leaves": [describe(leaf) for leaf in leaves],
        "environment": environment(),
        "jax_config": {k: repr(v) for k, v in sorted(jax.config.values.items())},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def describe(leaf) -> list:
    """What of an argument a compiled program depends on: never its value."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        sharding = getattr(leaf, "sharding", None)
        weak = bool(getattr(leaf, "weak_type", False))
        return [list(leaf.shape), str(leaf.dtype), weak, repr(sharding)]
    return [type(leaf).__name__]


@functools.cache
def environment() -> dict[str, Any]:
    """What the process holds fixed: jaxcnn's source, versions, devices and the CPU."""
    import flax
    import jaxlib
    import ml_dtypes
    import numpy
    import optax

    devices = jax.devices()
    modules = (jax, jaxlib, flax, optax, numpy, ml_dtypes)
    return {
        "source": source_digest(),
        "versions": [m.__version__ for m in modules] + [sys.version],
        "backend": [devices[0].client.platform, devices[0].client.platform_version],
        "devices": [[d.id, d.device_kind, d.process_index] for d in devices],
        "processes": jax.process_count(),
        "machine": [platform.machine(), cpu_features()],
        "direct_kernel": direct_kernel(devices[0].platform),
    }


def direct_kernel(platform_name: str) -> str | None:
    """The direct convolution library's digest on a CPU where it builds, else None.

    Asking builds and registers it: a stored program may call it, and its custom-call
    targets must be known to XLA before such a program is loaded.
    """
    if platform_name != "cpu":
        return None
    from jaxcnn.kernels import direct

    return direct.digest() if direct.available() else None


def source_digest() -> str:
    """sha256 of every ``.py`` and ``.cc`` file of the jaxcnn package, by relative path."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.cc")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cpu_features() -> str:
    """The CPU's model and feature flags: XLA:CPU compiles for the host's instruction set,
    so a cache shared between machines must not hand one CPU's code to another."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    seen = [line for line in lines if line.split(":")[0].strip() in wanted]
    return "\n".join(dict.fromkeys(seen))  # one of each, in order
