"""What --real costs: the message round trip of a model's weights and gradient, and server updates/s against
synchronous training on the same machine, measured in one run.

    python3 benchmarks/real_asgd.py                   # ResNet-20 wire round trips, then fc on mnist5k runs
    python3 benchmarks/real_asgd.py --workers 3 --epochs 1
    python3 benchmarks/real_asgd.py --dataset cifar10 --model resnet20 --batch-size 128 --train-limit 2560 --workers 8

1. Round trip: a worker-sized process pair on this machine (socketpair, the real server's Wire): the worker packs
   ResNet-20's gradient, buffers and a batch of 128 logits, sends it; the server receives it, packs the weights and
   replies; the worker receives and unpacks them. The median over `--repeats`.
2. Updates/s: `basinlab train` plain, and with --server asgd --workers N --real, on the same data and model; the
   ratio of training images per second (results.csv's train_images_per_s, epoch time only).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing import Pipe

import pandas as pd
import torch

import basinlab
from basinlab.methods.asgd.real.wire import GRADIENT, WEIGHTS, Wire
from basinlab.models import create_model


def round_trip_ms(repeats: int) -> tuple[float, int]:
    model = create_model("resnet20", 10, "cifar10")
    params, buffers = list(model.parameters()), list(model.buffers())
    for p in params:
        p.grad = torch.randn_like(p)
    server_end, worker_end = Pipe()
    server_wire, worker_wire = Wire(params, buffers, 10, 128), Wire(params, buffers, 10, 128)
    logits, labels = torch.randn(128, 10), torch.randint(10, (128,))

    def serve():
        for _ in range(repeats):
            server_wire.receive(server_end)
            server_wire.send(server_end, server_wire.pack_weights(WEIGHTS, {"version": 1}))

    thread = threading.Thread(target=serve)
    thread.start()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block = worker_wire.pack_gradient(GRADIENT, {"version": 0}, logits, labels)
        worker_wire.send(worker_end, block)
        worker_wire.receive(worker_end)
        worker_wire.unpack_weights(params, worker_wire.float_buffers, worker_wire.int_buffers)
        times.append(time.perf_counter() - start)
        size = len(block)
    thread.join()
    return 1000 * statistics.median(times), size


def images_per_s(folder: str, name: str, args, **options) -> float:
    basinlab.train(dataset=args.dataset, model=args.model, batch_size=args.batch_size, train_limit=args.train_limit,
                   lr=0.05, quiet=True, results_dir=folder, save=name, amp=args.amp, **options)
    return float(pd.read_csv(f"{folder}/{name}/results.csv").train_images_per_s.median())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--model", default="fc")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--amp", default="none")
    args = parser.parse_args(argv)
    ms, size = round_trip_ms(args.repeats)
    print(f"ResNet-20 message round trip (gradient {size / 2**20:.2f} MiB out, weights back): {ms:.2f} ms median "
          f"of {args.repeats}")
    with tempfile.TemporaryDirectory() as folder:
        plain = images_per_s(folder, "plain", args, epochs=args.epochs)
        real = images_per_s(folder, "real", args, epochs=args.epochs, server="asgd", workers=args.workers, real=True)
    print(f"{args.model} on {args.dataset}, batch {args.batch_size}, {args.epochs} epochs, amp {args.amp}, "
          f"{torch.get_num_threads()} threads in this process:")
    print(f"  plain {plain:.0f} images/s, --real with {args.workers} workers {real:.0f} images/s: ratio "
          f"{real / plain:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
