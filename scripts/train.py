"""Train a seed model: ``python scripts/train.py --model inception --dataset mnist``.

Defaults come from the model's seed recipe; flags override them. See README.md.
"""

import argparse

from jaxcnn.cli import (
    add_data_flags,
    add_impl_flags,
    enable_compilation_cache,
    executables,
    exit_now,
    impl_overrides,
    import_flax,
    run_main,
)
from jaxcnn.errors import UserError


def build_parser(models) -> argparse.ArgumentParser:
    """The flags: the run's (model, data, workdir, recipe overrides, devices, outputs)
    and, from ``jaxcnn.cli``, how a step computes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(models)}")
    add_data_flags(parser)
    parser.add_argument("--workdir", help="where files go (default: runs/<model>-<dataset>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    parser.add_argument("--init-from", help="start from a PyTorch .pt/.pth/.safetensors file")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--optimizer", help="sgd or adam")
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, help="use only the first N training images")
    parser.add_argument(
        "--permute-pixels", action="store_true", help="one fixed pixel shuffle (seed 001 sec. 4)"
    )
    parser.add_argument(
        "--progress-seconds",
        type=float,
        help="about this long per compiled call of an epoch: the bar moves and Ctrl-C "
        "lands between calls (default: 2 on a CPU, 0 elsewhere; 0: one call per epoch)",
    )
    add_impl_flags(parser)
    parser.add_argument("--devices", help="data-parallel over 'all' or N local devices")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="one process of a multi-process run (jax.distributed); see README",
    )
    parser.add_argument("--coordinator", help="with --distributed: process 0's HOST:PORT")
    parser.add_argument("--num-processes", type=int, help="with --distributed")
    parser.add_argument("--process-id", type=int, help="with --distributed: 0 .. N-1")
    parser.add_argument("--profile", help="write a jax.profiler trace of 10 steps to this dir")
    parser.add_argument("--dump-hlo", help="write the optimized HLO to this dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_and_init(args):
    """The run's config from the seed's recipe and the flags, and the initial parameters
    of ``--init-from`` (None without it); any process's bad flag stops them all."""
    from jaxcnn import parallel, train

    with parallel.all_or_none():
        config = train.get_config(
            args.model,
            args.dataset,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=args.optimizer,
            momentum=args.momentum,
            seed=args.seed,
            data_dir=args.data_dir,
            train_limit=args.train_limit,
            progress_seconds=args.progress_seconds,
            permute_pixels=args.permute_pixels or None,
            devices=parallel.parse_devices(args.devices),
            **impl_overrides(args),
        )
        init_params = None
        if args.init_from:
            from parity import load_torch_params

            init_params = load_torch_params(args.init_from, args.model)
    return config, init_params


def main() -> None:
    import_flax()  # before anything imports flax: the models' names below do
    from jaxcnn.models import MODELS

    args = build_parser(MODELS).parse_args()
    cache = enable_compilation_cache()
    from jaxcnn import experiment, parallel
    from jaxcnn import workdir as workdirs

    if args.distributed:
        parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    elif args.coordinator or args.num_processes is not None or args.process_id is not None:
        raise UserError("--coordinator, --num-processes and --process-id need --distributed")
    config, init_params = config_and_init(args)
    workdir = args.workdir
    if workdir is None:
        workdir, note = workdirs.default_workdir(args.model, args.dataset, args.resume)
        if note and parallel.is_primary():
            print(note, flush=True)
    summary = experiment.train_and_evaluate(
        config,
        workdir,
        resume=args.resume,
        init_model=init_params,
        progress=not args.no_progress,
        profile_dir=args.profile,
        hlo_dir=args.dump_hlo,
        executables=executables(cache),
    )
    if parallel.is_primary():
        print(f"test accuracy {100 * summary['test_accuracy']:.2f}%; files in {workdir}")
    if not args.distributed:  # every file is written and closed: skip the ~1 s teardown
        exit_now()


if __name__ == "__main__":
    run_main(main)
