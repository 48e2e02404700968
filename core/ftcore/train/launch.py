"""Multi-process launching: ``ftcore run --nproc-per-node N`` relaunches itself through torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from ..errors import FtcoreError


@dataclass
class Launch:
    """Where this run's processes go; read from flags, else the env vars XTuner users know."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @classmethod
    def resolve(cls, nproc: str | None, nnodes: int | None, node_rank: int | None, addr: str | None, port: int | None) -> "Launch":
        env = os.environ
        nproc = nproc or env.get("NPROC_PER_NODE") or "1"
        if nproc == "auto":
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 1
        else:
            try:
                count = int(nproc)
            except ValueError:
                raise FtcoreError(f"--nproc-per-node must be a number or auto, got {nproc!r}") from None
        if count < 1:
            raise FtcoreError("--nproc-per-node must be at least 1")
        return cls(
            nproc_per_node=count,
            nnodes=int(nnodes or env.get("NNODES") or 1),
            node_rank=int(node_rank if node_rank is not None else env.get("NODE_RANK") or 0),
            master_addr=addr or env.get("ADDR") or "127.0.0.1",
            master_port=int(port or env.get("PORT") or (29500 if int(nnodes or env.get("NNODES") or 1) > 1 else free_port())),
        )


def free_port() -> int:
    """A free TCP port on this machine: one-machine runs side by side (two jobs, or a test suite's
    workers) must not all take torchrun's 29500; several machines agree on --master-port instead."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def under_launcher() -> bool:
    """True inside a process torchrun started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(launch: Launch, run_args: list[str]) -> int:
    """Run ``ftcore run RUN_ARGS`` in ``nproc_per_node`` processes through torch.distributed.run."""
    cmd = [
        sys.executable, "-m", "ftcore.train.launch",
        f"--nproc-per-node={launch.nproc_per_node}", f"--nnodes={launch.nnodes}", f"--node-rank={launch.node_rank}",
        f"--master-addr={launch.master_addr}", f"--master-port={launch.master_port}",
        "-m", "ftcore.cli", "run", *run_args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.call(cmd, env=env)


def torchrun(argv: list[str]) -> int:
    """``torch.distributed.run ARGV``, ending with the exit status of the first process that failed
    and one line saying which, instead of the launcher's own traceback: each process has already
    printed its error (a user mistake as one ``error:`` line)."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # "failed (exitcode: 2)", "closing signal": said below
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # killed by a signal: 128 + its number
        print(f"ftcore: process rank {rank} exited with status {code}; the run stopped (its message is above)", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":  # what relaunch runs: torchrun's arguments, then the ftcore command
    sys.exit(torchrun(sys.argv[1:]))
