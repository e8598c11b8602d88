"""The weight-transfer group: trainer rank 0 (rank 0 here) and every rollout engine worker.

A standalone ``torch.distributed`` process group, not the default one: the trainer's rank 0
already belongs to DeepSpeed's default group and a vLLM worker to vLLM's own. Rendezvous is a
``TCPStore`` hosted by rank 0 on a fresh port per group, so a group is re-formed after a member
restarted simply by every member joining a new one. The backend follows the device the
weights live on: gloo for CPU tensors (what the tests run), NCCL for CUDA tensors; the code
path is the same.

Wire format: the bucket plan (``actors.rollout.buckets``) is known to every member before a
sync; rank 0 then broadcasts one flat buffer per bucket, in plan order, as raw bytes. Rank 0
keeps up to two broadcasts in flight (packing bucket k+1 while bucket k is on the wire), and
a receiver posts the broadcast of bucket k+1 before loading bucket k.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import torch

from actors.rollout.buckets import Bucket, NamedTensors, pack_bucket, unpack_bucket

# Broadcasts of one bucket finish in well under a minute even for 256 MB over gloo; a peer
# that died mid-sync makes the others fail after this long instead of hanging for ever.
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class GroupAddress:
    """Where and how big: rank 0's TCPStore at ``host:port``, ``world_size`` members in all."""

    host: str
    port: int
    world_size: int
    timeout_s: float = DEFAULT_TIMEOUT_S


def _process_group(store, rank: int, size: int, timeout: datetime.timedelta, device: torch.device, hostname: str):
    import torch.distributed as dist

    if device.type == "cuda":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, size, opts)
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = timeout
    # Bind to this node's address, not whatever the hostname resolves to (often 127.0.1.1).
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=hostname)]
    return dist.ProcessGroupGloo(store, rank, size, opts)


class TransferGroup:
    """Membership ``rank`` of the group at ``address``; the constructor returns once every member
    has joined (all members must construct concurrently). ``device``: where this member's buffers
    live (cuda -> NCCL, cpu -> gloo). ``hostname``: this member's own address."""

    def __init__(self, address: GroupAddress, rank: int, device: torch.device, hostname: str) -> None:
        import torch.distributed as dist

        if not 0 <= rank < address.world_size:
            raise ValueError(f"rank {rank} is outside the transfer group of {address.world_size}")
        self.address, self.rank, self.device = address, rank, torch.device(device)
        timeout = datetime.timedelta(seconds=address.timeout_s)
        self.store = dist.TCPStore(address.host, address.port, address.world_size, is_master=rank == 0,
                                   timeout=timeout, wait_for_workers=False)
        self.pg = _process_group(self.store, rank, address.world_size, timeout, self.device, hostname)
        self._in_flight: List[Tuple[object, torch.Tensor]] = []

    def _broadcast(self, flat: torch.Tensor):
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        # Bytes on the wire: every dtype (bfloat16 included) goes through every backend unchanged.
        return self.pg.broadcast([flat.view(torch.uint8)], opts)

    # ------------------------------------------------------------------ rank 0
    def send_bucket(self, bucket: Bucket, tensors: Sequence[torch.Tensor]) -> int:
        """Pack ``tensors`` (bucket order, full shapes) and start their broadcast; returns bytes.
        The tensors may be released as soon as this returns (they were copied)."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 sends")
        if len(self._in_flight) >= 2:  # two buffers: pack the next while the previous is on the wire
            work, _ = self._in_flight.pop(0)
            work.wait()
        flat = pack_bucket(bucket, [t.to(self.device) for t in tensors],
                           out=torch.empty(bucket.numel, dtype=bucket.dtype, device=self.device))
        self._in_flight.append((self._broadcast(flat), flat))
        return bucket.nbytes

    def flush(self) -> None:
        """Wait until every started broadcast has completed."""
        while self._in_flight:
            work, _ = self._in_flight.pop(0)
            work.wait()
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    # --------------------------------------------------------------- receivers
    def receive(self, buckets: Sequence[Bucket]) -> Iterator[Tuple[Bucket, NamedTensors]]:
        """Yield ``(bucket, [(name, tensor)])`` for every bucket of the plan, in order. Each bucket
        lands in a fresh buffer, so the yielded views stay valid after the next one arrives
        (vLLM's layerwise reload may hold a layer's first weights until its last one)."""
        if self.rank == 0:
            raise RuntimeError("rank 0 sends; it does not receive")
        if not buckets:
            return
        def post(b: Bucket) -> Tuple[object, torch.Tensor]:
            flat = torch.empty(b.numel, dtype=b.dtype, device=self.device)
            return self._broadcast(flat), flat

        pending = post(buckets[0])
        for k, bucket in enumerate(buckets):
            work, flat = pending
            if k + 1 < len(buckets):
                pending = post(buckets[k + 1])  # on the wire while this bucket is loaded
            work.wait()
            yield bucket, unpack_bucket(bucket, flat)

    def close(self) -> None:
        """Leave the group (nothing is exchanged: a dead peer cannot block this)."""
        self._in_flight.clear()
        pg, self.pg = getattr(self, "pg", None), None
        if pg is not None and self.device.type == "cuda":
            try:
                pg.abort()
            except Exception:  # already broken or torn down
                pass
        self.store = None


def node_ip() -> str:
    """This process's node address as Ray sees it (127.0.0.1 outside Ray)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:
        return "127.0.0.1"
