"""One worker process of a real parameter server: `python -m basinlab.methods.asgd.real.worker`.

It reads its instructions as JSON on stdin (the run's resolved config, the server's address and key, its number),
builds the run's model and data the trainer's way (engine/setup.build_data_and_model), connects, and then, until
told to stop:

    receive weights (START: with the epoch, first batch and stride of this worker's share)
    compute the gradient of its next batch on those weights (forward under the run's autocast, backward)
    send gradient, buffers, logits and labels with the version it read; wait for the reply

It keeps no optimizer: the update is the server's. A failure ends the process with its one-line reason on stderr
(the server's log repeats it). When the server goes away its socket closes and the worker ends.
"""
from __future__ import annotations

import json
import sys
import time
from multiprocessing.connection import Client

import torch
import yaml


class _Log:
    """The worker's log: stderr, one line each (the server shows the last one if the worker dies)."""

    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    __call__ = info


def _config(instructions: dict):
    from basinlab.config import from_mapping, validated_config
    return validated_config(from_mapping(yaml.safe_load(instructions["config"]), where="the server's config"))


class Worker:
    def __init__(self, instructions: dict):
        from basinlab.engine.distributed import DataParallel
        from basinlab.engine.setup import build_data_and_model, pick_device
        from basinlab.engine.step_context import StepContext
        from basinlab.methods.asgd.real.wire import Wire
        self.cfg = cfg = _config(instructions)
        self.index = int(instructions["worker"])
        torch.set_num_threads(int(instructions.get("threads", 1)))
        self.device = pick_device(instructions.get("device", "cpu"))
        self.loader, self.val_loader, self.model, self.data_regime, _ = build_data_and_model(
            cfg, self.device, DataParallel(cfg), _Log())
        self.ctx = StepContext.from_config(cfg, self.model, self.device)
        self.params = list(self.model.parameters())
        buffers = list(self.model.buffers())
        self.float_buffers = [b for b in buffers if b.is_floating_point()]
        self.int_buffers = [b for b in buffers if not b.is_floating_point()]
        self.wire = Wire(self.params, buffers, self.loader.num_classes, self.loader.batch_size)
        self.conn = Client(tuple(instructions["address"]), authkey=bytes.fromhex(instructions["key"]))

    def run(self) -> None:
        from basinlab.methods.asgd.real.wire import HELLO, START, STOP
        self.wire.send(self.conn, self.wire.pack_weights(HELLO, {"worker": self.index}))
        plan = None
        while True:
            kind = self.wire.receive(self.conn)
            if kind == STOP:
                return
            if kind == START:
                plan = self._share(int(self.wire.field("epoch")), int(self.wire.field("batch")),
                                   int(self.wire.field("stride")))
            self.version = int(self.wire.field("version"))
            self.wire.unpack_weights(self.params, self.float_buffers, self.int_buffers)
            self.read_time = time.time()
            step = next(plan, None) if plan is not None else None
            if step is None:
                plan = None   # this share is done: wait for the next epoch's START (or STOP)
                continue
            self._push(*step)

    def _share(self, epoch: int, first: int, stride: int):
        """(epoch, batch number, x, y) of this worker's batches of `epoch`: first, first + stride, ..."""
        from basinlab.engine.data_settings import apply_data_settings
        apply_data_settings(self.data_regime.settings_at(epoch), self.loader, self.val_loader,
                            flag_batch=self.cfg.batch_size is not None, flag_eval_batch=True)
        for offset, (x, y) in enumerate(self.loader.epoch(epoch, start_batch=first, stride=stride)):
            yield epoch, first + offset * stride, x, y

    def _push(self, epoch: int, batch: int, x, y) -> None:
        from basinlab.data.loader import derive_seed
        from basinlab.methods.asgd.real.wire import GRADIENT, NONFINITE
        torch.manual_seed(derive_seed("real-worker", self.cfg.seed, epoch, batch))  # dropout: one stream per batch
        self.model.train()
        loss, logits = self.ctx.forward(x, y)
        finite = bool(torch.isfinite(loss))
        if finite:
            self.ctx.backward(loss)
        fields = {"version": self.version, "epoch": epoch, "batch": batch, "read_time": self.read_time,
                  "sent_time": time.time(), "loss": float(loss.detach()), "worker": self.index}
        block = self.wire.pack_gradient(GRADIENT if finite else NONFINITE, fields, logits, y)
        for p in self.params:
            p.grad = None
        self.wire.send(self.conn, block)


def serve(instructions: dict) -> int:
    """Build this worker from `instructions` and run it until the server says stop; the exit status."""
    from basinlab.models import trusting_model_code
    try:
        with trusting_model_code(bool(instructions.get("trust"))):  # the server's process built this model
            worker = Worker(instructions)
        worker.run()
        return 0
    except (EOFError, ConnectionError, BrokenPipeError):
        print("the server went away; this worker ends", file=sys.stderr, flush=True)
        return 0
    except Exception as exc:  # noqa: BLE001 - the one line the server repeats
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1


def main() -> int:
    """A worker started by the server on this machine: its instructions arrive on stdin."""
    return serve(json.loads(sys.stdin.read()))


if __name__ == "__main__":
    sys.exit(main())
