"""What a real parameter server and its worker processes send each other: raw numbers over a socket, never pickle.

Each message is one byte block: a float64 header (HEADER's fields, a has-gradient flag per parameter, then the
model's integer buffers, e.g. BatchNorm's num_batches_tracked, exact below 2**53) and a float32 body:

- server -> worker (START, WEIGHTS, STOP): the parameters, then the floating buffers, in the model's order.
- worker -> server (GRADIENT, NONFINITE): the gradient (parameters' order; a missing .grad is a 0 flag and zeros),
  the floating buffers after the worker's forward pass, then the batch's logits and labels.

Both sides build the same `Wire` from the same model, so a layout never travels. The connections are
`multiprocessing.connection`'s, authenticated with a per-run random key; `recv_bytes_into` fills a preallocated
buffer (no copy, no unpickling).
"""
from __future__ import annotations

import numpy as np
import torch

HEADER = ("kind", "version", "epoch", "batch", "stride", "read_time", "sent_time", "loss", "examples", "worker")
START, WEIGHTS, STOP, GRADIENT, NONFINITE, HELLO = 1, 2, 3, 4, 5, 6
KIND_NAMES = {START: "start", WEIGHTS: "weights", STOP: "stop", GRADIENT: "gradient", NONFINITE: "non-finite",
              HELLO: "hello"}


def _numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


class Wire:
    """The byte layout of one model's messages, and a buffer to build or receive them in."""

    def __init__(self, params, buffers, num_classes: int, examples: int = 0):
        self.params = list(params)
        self.float_buffers = [b for b in buffers if b.is_floating_point()]
        self.int_buffers = [b for b in buffers if not b.is_floating_point()]
        self.num_classes = num_classes
        self.header_len = len(HEADER) + len(self.params) + _numel(self.int_buffers)
        self.weights_len = _numel(self.params) + _numel(self.float_buffers)
        self._allocate(examples)

    def _allocate(self, examples: int) -> None:
        self.examples, self.length = examples, 0
        body = max(1, self.weights_len + examples * (self.num_classes + 1))  # gradients: as long as the weights
        self.raw = bytearray(8 * self.header_len + 4 * body)
        self.header = np.frombuffer(self.raw, np.float64, self.header_len)
        self.body = torch.frombuffer(self.raw, dtype=torch.float32, offset=8 * self.header_len, count=body)

    def fit(self, examples: int) -> None:
        """Room for a gradient message of a batch of `examples` (a data regime may grow the batch)."""
        if examples > self.examples:
            self._allocate(examples)

    # ------------------------------------------------------------------------------ header
    def field(self, name: str) -> float:
        return float(self.header[HEADER.index(name)])

    def kind(self) -> int:
        return int(self.header[0])

    def _write_header(self, kind: int, fields: dict, grad_flags=None) -> None:
        self.header[:len(HEADER)] = 0.0
        self.header[0] = kind
        for name, value in fields.items():
            self.header[HEADER.index(name)] = value
        flags = self.header[len(HEADER):len(HEADER) + len(self.params)]
        flags[:] = 1.0 if grad_flags is None else grad_flags
        at = len(HEADER) + len(self.params)
        for b in self.int_buffers:
            self.header[at:at + b.numel()] = b.detach().reshape(-1).cpu().double().numpy()
            at += b.numel()

    def read_int_buffers_into(self, buffers) -> None:
        """The message's integer buffers (its header's tail) copied into `buffers`."""
        at = len(HEADER) + len(self.params)
        for b in buffers:
            values = torch.from_numpy(self.header[at:at + b.numel()].copy()).to(b.dtype).view(b.shape)
            b.copy_(values)
            at += b.numel()

    def grad_flags(self) -> np.ndarray:
        return self.header[len(HEADER):len(HEADER) + len(self.params)] != 0

    # ------------------------------------------------------------------------------ body
    def _pieces(self, tensors, start: int) -> tuple[list[torch.Tensor], int]:
        out = []
        for t in tensors:
            out.append(self.body[start:start + t.numel()].view(t.shape))
            start += t.numel()
        return out, start

    @torch.no_grad()
    def pack_weights(self, kind: int, fields: dict) -> memoryview:
        """Header + the model's parameters and floating buffers (as they are now)."""
        self._write_header(kind, fields)
        pieces, end = self._pieces(self.params + self.float_buffers, 0)
        for piece, t in zip(pieces, self.params + self.float_buffers):
            piece.copy_(t.detach())
        return memoryview(self.raw)[:8 * self.header_len + 4 * end]

    @torch.no_grad()
    def unpack_weights(self, params, float_buffers, int_buffers) -> None:
        pieces, _ = self._pieces(self.params + self.float_buffers, 0)
        for t, piece in zip(list(params) + list(float_buffers), pieces):
            t.copy_(piece)
        self.read_int_buffers_into(int_buffers)

    @torch.no_grad()
    def pack_gradient(self, kind: int, fields: dict, logits: torch.Tensor | None, labels: torch.Tensor) -> memoryview:
        """Header + the parameters' .grad (zeros where None), floating buffers, logits and labels."""
        n = labels.shape[0]
        self.fit(n)
        flags = [p.grad is not None for p in self.params]
        self._write_header(kind, {**fields, "examples": n}, grad_flags=flags)
        grads, end = self._pieces(self.params, 0)
        for piece, p in zip(grads, self.params):
            if p.grad is None:
                piece.zero_()
            else:
                piece.copy_(p.grad)
        buffers, end = self._pieces(self.float_buffers, end)
        for piece, b in zip(buffers, self.float_buffers):
            piece.copy_(b)
        out = self.body[end:end + n * self.num_classes]
        if logits is None:
            out.zero_()
        else:
            out.copy_(logits.detach().float().reshape(-1))
        end += n * self.num_classes
        self.body[end:end + n].copy_(labels.float())
        return memoryview(self.raw)[:8 * self.header_len + 4 * (end + n)]

    def gradient_views(self) -> tuple[list, list, torch.Tensor, torch.Tensor]:
        """(gradients or None per parameter, floating buffers, logits, labels) of a received gradient message:
        views into this buffer, valid until it receives again."""
        grads, end = self._pieces(self.params, 0)
        flags = self.grad_flags()
        grads = [g if flag else None for g, flag in zip(grads, flags)]
        buffers, end = self._pieces(self.float_buffers, end)
        n = int(self.field("examples"))
        logits = self.body[end:end + n * self.num_classes].view(n, self.num_classes)
        labels = self.body[end + n * self.num_classes:end + n * (self.num_classes + 1)].long()
        return grads, buffers, logits, labels

    # ------------------------------------------------------------------------------ transport
    def send(self, conn, block: memoryview) -> None:
        conn.send_bytes(block)

    def receive(self, conn) -> int:
        """Fill the buffer from `conn` (growing it for a larger batch); the message's kind."""
        from multiprocessing.connection import BufferTooShort
        try:
            self.length = conn.recv_bytes_into(self.raw)
        except BufferTooShort as exc:
            self.load_message(exc.args[0])
        return self.kind()

    def load_message(self, data: bytes) -> None:
        """Put a whole message (received, or kept in a checkpoint) into the buffer."""
        if len(data) > len(self.raw):
            self._allocate(self.examples + (len(data) - len(self.raw)) // (4 * (self.num_classes + 1)) + 1)
        self.raw[:len(data)] = data
        self.length = len(data)

    def message(self) -> bytes:
        """The bytes of the message the buffer holds."""
        return bytes(self.raw[:self.length])

    def repack(self, data: bytes, kind: int, fields: dict) -> memoryview:
        """A kept weights message again, as `kind` with `fields` changed (its weights and version as they were)."""
        self.load_message(data)
        self.header[0] = kind
        for name, value in fields.items():
            self.header[HEADER.index(name)] = value
        return memoryview(self.raw)[:self.length]

    def params_of(self, data: bytes) -> torch.Tensor:
        """The flat parameters of a weights message `data` (a copy)."""
        n = sum(p.numel() for p in self.params)
        return torch.from_numpy(np.frombuffer(data, np.float32, count=n, offset=8 * self.header_len).copy())
