"""Data-parallel training of one cell by every rank together, through `deepspeed.initialize`.

Used when a dataset is too big for one GPU (grid.parallel=data, trainer.data_parallel=true).
Each rank reads its own shard of every batch (engine/data/sharding.py), DeepSpeed averages the
gradients (ZeRO stage from trainer.zero_stage) and the loop goes on as in one process. bf16 goes
through DeepSpeed's `torch_autocast` setting, so BatchNorm stays in fp32 (its `bf16` mode would
cast the whole model). ZeRO stages 1 and 2 keep gradients in their own partitioned buffers, so
strategies that read or change gradients (SP, Auto-RGN, Auto-SNR) need stage 0; the loop says
so before it trains. Stage 3 also partitions the weights, which the checkpoints and the LP
feature cache read whole: it is refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

_DS_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class RankGroup:
    """The processes (ranks) that train one cell together, and the collectives the loop uses."""

    rank: int
    world: int
    local_rank: int
    zero_stage: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, amp_dtype: torch.dtype | None,
             micro_batch: int, grad_clip_norm: float | None):
        """A DeepSpeed engine over `model` stepping `optimizer` (rebuilt with every new optimizer)."""
        import deepspeed

        config = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": self.zero_stage},
                  "torch_autocast": {"enabled": amp_dtype is not None, "dtype": _DS_DTYPES.get(amp_dtype, "bfloat16")},
                  "gradient_clipping": grad_clip_norm or 0.0, "steps_per_print": 10 ** 9}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        return engine

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(tensor)
        return tensor

    def mean_grads_(self, grads: list[torch.Tensor]) -> None:
        """Averages gradients over the ranks in place (a backward that DeepSpeed did not run)."""
        for grad in grads:
            torch.distributed.all_reduce(grad)
        torch._foreach_div_(grads, self.world)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows (shards differ in length by at most one), concatenated in rank order."""
        parts = [None] * self.world
        torch.distributed.all_gather_object(parts, tensor.cpu())
        return torch.cat(parts).to(tensor.device)

    def barrier(self) -> None:
        torch.distributed.barrier()


def init_rank_group(zero_stage: int) -> RankGroup:
    """Joins the process group the launcher (deepspeed, torchrun) described in the environment.

    Raises:
        ValueError: no launcher environment (RANK/WORLD_SIZE), or ZeRO stage 3.
    """
    if zero_stage not in (0, 1, 2):
        raise ValueError(f"trainer.zero_stage must be 0, 1 or 2 for data-parallel cells, got {zero_stage} "
                         "(stage 3 partitions the weights the checkpoints read whole)")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("trainer.data_parallel needs a launcher: run under `deepspeed` or `torchrun` "
                         "(RANK and WORLD_SIZE are not set)")
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return RankGroup(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, zero_stage)
