"""Evaluate a checkpoint: a jaxcnn workdir/orbax checkpoint, or a PyTorch .pt/.safetensors file.

``python scripts/evaluate.py --model M --checkpoint PATH --dataset D [--json]``
"""

import argparse
import json

from jaxcnn.cli import (
    add_data_flags,
    enable_compilation_cache,
    executables,
    import_flax,
    run_main,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--checkpoint", required=True, help="workdir, checkpoint, .pt or .safetensors"
    )
    add_data_flags(parser)
    parser.add_argument("--json", action="store_true", help="last line: a JSON object")
    args = parser.parse_args()

    cache = enable_compilation_cache()
    import_flax()
    import jax

    from jaxcnn import data, train
    from jaxcnn.checkpoint import Checkpoints, find_checkpoint_dir

    config = train.get_config(args.model, args.dataset, data_dir=args.data_dir)
    if args.checkpoint.endswith((".pt", ".pth", ".safetensors")):
        from parity import load_torch_params

        program, state = train.create_program(
            config, load_torch_params(args.checkpoint, args.model), executables(cache)
        )
    else:
        workdir, epoch = find_checkpoint_dir(args.checkpoint)
        program, state = train.create_program(config, executables=executables(cache))
        state = Checkpoints(workdir).restore(state, epoch)
    test = data.load(args.dataset, "test", args.data_dir)
    data.check_compatible(test, program.input_shape, args.model, args.dataset)
    images, labels = jax.device_put(test.images), jax.device_put(test.labels)
    evaluate = program.compile("eval", train.make_eval_fn(program), state.params, images, labels)
    accuracy, loss, _ = evaluate(state.params, images, labels)
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "checkpoint": args.checkpoint,
        "test_accuracy": float(accuracy),
        "test_loss": float(loss),
        "test_images": len(test.labels),
    }
    print(
        f"{args.model} on {args.dataset}: test accuracy {100 * result['test_accuracy']:.2f}% "
        f"({result['test_images']} images), loss {result['test_loss']:.4f}"
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
