"""The worker processes of a real parameter server: started, connected, listened to, and always ended.

`WorkerPool.start` runs N `python -m basinlab.methods.asgd.real.worker` processes on this machine. Each reads its
instructions (the run's resolved config, the server's address, a per-run random key) as JSON on stdin, connects
back over TCP and proves it knows the key (multiprocessing.connection's HMAC challenge): nothing on the socket is
ever unpickled. `receive_any` is the server's loop: the next message from whichever worker sends first, with a
dead worker noticed within a second (its socket closes; its exit status and last stderr line are kept).
Why sockets and not gloo point-to-point: a gloo receive from any source cannot be polled or timed out without
losing the next message, and a peer killed mid-message aborts the server (measured with torch 2.13), so a run
could not outlive a lost worker.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge, wait
from pathlib import Path

from basinlab.errors import WorkerLostError

CONNECT_TIMEOUT_S = 300   # a worker builds its model and data before it connects (a large dataset takes a while)
STOP_GRACE_S = 10         # after STOP, how long a worker may take to exit before it is killed


class WorkerPool:
    """N worker processes, their connections and what became of them."""

    def __init__(self, count: int, log):
        self.count, self.log = count, log
        self.procs: dict[int, subprocess.Popen] = {}
        self.conns: dict[int, Connection] = {}
        self.lost: dict[int, str] = {}          # worker -> why it ended
        self.ended: dict[int, int] = {}         # worker -> exit status, once it has ended
        self.folder = Path(tempfile.mkdtemp(prefix="basinlab-workers-"))

    # ------------------------------------------------------------------------------ start
    def start(self, instructions: dict, threads: int) -> None:
        """Start the N worker processes here, or, as rank 0 of a torchrun job, tell its other ranks where to
        connect (ranks.py); then wait for every connection."""
        from basinlab.methods.asgd.real.ranks import publish, serving_ranks
        key = secrets.token_bytes(32)
        ranks = serving_ranks()
        server = socket.create_server(("0.0.0.0" if ranks else "127.0.0.1", 0))
        server.settimeout(1.0)
        try:
            port = server.getsockname()[1]
            if ranks:
                publish({**instructions, "key": key.hex()}, port)
            for worker in range(0 if ranks else self.count):
                self._spawn(worker, {**instructions, "worker": worker, "address": ["127.0.0.1", port],
                                     "key": key.hex()}, threads)
            self._accept(server, key)
        finally:
            server.close()

    def _spawn(self, worker: int, instructions: dict, threads: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)  # a worker is not a torchrun rank
        with open(self.folder / f"worker-{worker}.log", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "basinlab.methods.asgd.real.worker"], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        self.procs[worker] = proc
        proc.stdin.write(json.dumps(instructions).encode())
        proc.stdin.close()

    def _accept(self, server: socket.socket, key: bytes) -> None:
        from basinlab.methods.asgd.real.wire import HELLO, Wire
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        hello = Wire([], [], 1)
        while len(self.conns) < self.count:
            self._check_started(deadline)
            try:
                sock, _ = server.accept()
            except TimeoutError:
                continue
            sock.settimeout(None)
            conn = Connection(sock.detach())
            deliver_challenge(conn, key)
            answer_challenge(conn, key)
            if hello.receive(conn) != HELLO:
                raise WorkerLostError("a worker process sent something other than its hello; stopping")
            self.conns[int(hello.field("worker"))] = conn

    def _check_started(self, deadline: float) -> None:
        for worker, proc in self.procs.items():
            if worker not in self.conns and proc.poll() is not None:
                raise WorkerLostError(f"worker {worker} ended before it connected (exit {proc.returncode}): "
                                      f"{self.last_error(worker)}")
        if time.monotonic() > deadline:
            raise WorkerLostError(f"the worker processes did not connect within {CONNECT_TIMEOUT_S} s; "
                                  f"their logs: {self.folder}")

    def last_error(self, worker: int) -> str:
        try:
            lines = (self.folder / f"worker-{worker}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1][:300] if lines else "no error message"

    # ------------------------------------------------------------------------------ traffic
    @property
    def alive(self) -> list[int]:
        return sorted(w for w in self.conns if w not in self.lost)

    def send(self, worker: int, wire, block) -> bool:
        """False when the worker is gone (it is marked lost)."""
        try:
            wire.send(self.conns[worker], block)
            return True
        except OSError:
            self._mark_lost(worker)
            return False

    def receive_any(self, wires: dict, among: set[int]) -> int | None:
        """The worker whose message arrived first (read into wires[worker]) among `among`; None when one of them
        was lost instead (marked; the caller decides what that means)."""
        while True:
            waiting = {self.conns[w]: w for w in among if w not in self.lost}
            if not waiting:
                return None
            ready = wait(list(waiting), timeout=1.0)
            for conn in ready:
                worker = waiting[conn]
                try:
                    wires[worker].receive(conn)
                    return worker
                except (EOFError, OSError):
                    self._mark_lost(worker)
                    return None
            for worker in waiting.values():
                if worker in self.procs and self.procs[worker].poll() is not None:
                    self._mark_lost(worker)
                    return None

    def _mark_lost(self, worker: int) -> None:
        if worker in self.lost:
            return
        proc = self.procs.get(worker)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        status = "running" if proc is None else f"exit {proc.returncode}"
        self.lost[worker] = f"worker {worker} ended ({status}): {self.last_error(worker)}"
        self.log(f"real parameter server: {self.lost[worker]}")

    # ------------------------------------------------------------------------------ end
    def close(self, stop_message) -> None:
        """STOP to every live worker, then wait; kill what is still there. Safe to call twice."""
        for worker in self.alive:
            try:
                stop_message(self.conns[worker])
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        for worker, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.ended[worker] = proc.returncode
        for conn in self.conns.values():
            conn.close()
        self.conns, self.procs = {}, {}
        if not self.lost:  # the logs of a lost worker stay for a look (the run's log names the folder)
            shutil.rmtree(self.folder, ignore_errors=True)

