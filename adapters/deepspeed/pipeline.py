"""A plan on DeepSpeed's pipeline engine: `pipeline_module` builds the `PipelineModule` (one
layer per stage, exact cuts, ties across any stages), `DeepSpeedPipeline` is one rank's whole
job (comm set-up, module, engine, a `step` per batch)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import deepspeed
import deepspeed.ops
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.ops.op_builder import ShareMemCommBuilder
from deepspeed.pipe import PipelineModule
from deepspeed.runtime.pipe.engine import PipelineEngine
from deepspeed.runtime.pipe.topology import PipeDataParallelTopology
from torch import nn

from adapters.deepspeed.config import ds_config
from adapters.deepspeed.wire import WireLoss, Wiring, feeder, stage_layer, wiring
from adapters.engine.inputs import FirstInputs, bind_inputs
from adapters.engine.trees import engine_stages
from adapters.engine.ties import TieSync
from core import Plan, PlanError

LossFn = Callable[[Any, Any], torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def init_comm() -> None:
    """Join DeepSpeed's comm layer to the torch.distributed group this process is in.

    DeepSpeed's torch backend JIT-compiles a shared-memory all-reduce with g++ when it starts
    (minutes on a small machine). Only `inference_all_reduce` uses it; training all-reduces go
    through the process group. DeepSpeed skips the build for an op that
    `deepspeed.ops.__compatible_ops__` marks incompatible (as on non-Linux hosts), so it is
    marked so here, before DeepSpeed's backend exists. `PipelineModule` reads LOCAL_RANK,
    which a launcher other than torchrun/deepspeed may not set: the rank is used then.
    """
    if not dist.is_initialized():
        raise PlanError("DeepSpeed runs in a torch.distributed process group: call init_process_group first.")
    os.environ.setdefault("LOCAL_RANK", str(dist.get_rank()))
    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)


class StagecutPipelineModule(PipelineModule):
    """A `PipelineModule` whose tied weights are the plan's tie groups, across any stages.

    DeepSpeed ties only weights that sit in their own `TiedLayerSpec` layers. Here every stage
    that uses a tied weight holds its own copy; `TieSync` makes one process group per tie
    group and data-parallel replica, broadcasts the lowest rank's copy at start, and the
    engine sums the gradients over each group before every optimizer step
    (`get_tied_weights_and_groups`, which its `ReduceTiedGrads` instruction calls).
    """

    def __init__(self, layers: Sequence[nn.Module], *, plan: Plan, model: nn.Module,
                 topology: PipeDataParallelTopology, loss_fn: LossFn) -> None:
        super().__init__(layers=list(layers), topology=topology, loss_fn=loss_fn, partition_method="uniform")
        rank = dist.get_rank()
        replicas = topology.get_dim("data")
        stages = len(plan.stages)
        # new_group is collective: every rank makes every group, in the same order.
        self.tie_syncs = [
            TieSync(plan, model, [topology.get_rank(pipe=s, data=d) for s in range(stages)], rank)
            for d in range(replicas)
        ]
        for sync in self.tie_syncs:
            sync.broadcast_weights()

    def get_tied_weights_and_groups(self) -> list[tuple[torch.Tensor, Any]]:
        pairs: list[tuple[torch.Tensor, Any]] = list(super().get_tied_weights_and_groups())
        for sync in self.tie_syncs:
            for copy in sync.copies:
                if copy.param.grad is None:  # the engine skips None, its peers would not
                    copy.param.grad = torch.zeros_like(copy.param)
                pairs.append((copy.param, copy.group))
        return pairs

    def allreduce_tied_weight_gradients(self) -> None:
        super().allreduce_tied_weight_gradients()
        for sync in self.tie_syncs:
            sync.all_reduce_grads()


def pipeline_module(
    plan: Plan,
    model: nn.Module,
    *,
    loss_fn: LossFn,
    num_microbatches: int,
    example_args: Sequence[Any],
    example_kwargs: Mapping[str, Any] | None = None,
    replicate: Collection[str] = (),
    data_parallel: int = 1,
    trusted_modules: Collection[str] = (),
) -> tuple[StagecutPipelineModule, Wiring]:
    """The plan as a `PipelineModule` for a pipe x data topology (`len(plan.stages)` stages,
    `data_parallel` replicas): one layer per stage, partitioned uniformly, so DeepSpeed's
    cuts are the plan's. `loss_fn(output, labels)` gets the model's output as the model
    returns it. Call on every rank, after `init_comm`."""
    stages = len(plan.stages)
    if dist.get_world_size() != stages * data_parallel:
        raise PlanError(
            f"{stages} stages x {data_parallel} data-parallel replicas need {stages * data_parallel} "
            f"processes; this group has {dist.get_world_size()}."
        )
    device = torch.device(get_accelerator().device_name(int(os.environ["LOCAL_RANK"])))
    leaves_plan, leaf_modules, one, _ = engine_stages(
        plan, model, example_args, example_kwargs, replicate, num_microbatches, trusted_modules
    )
    wires = wiring(leaves_plan, leaf_modules, one, device)
    layers = [stage_layer(leaves_plan, wires, s, leaf_modules[s], device) for s in range(stages)]
    topology = PipeDataParallelTopology(num_pp=stages, num_dp=data_parallel)
    loss = WireLoss(loss_fn, wires.ios[-1])
    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed prints the partition on rank 0
        module = StagecutPipelineModule(layers, plan=plan, model=model, topology=topology, loss_fn=loss)
    return module, wires


class DeepSpeedPipeline:
    """One rank's part of a plan trained on DeepSpeed's pipeline engine (1F1B, DeepSpeed's
    `TrainSchedule`). Call `step()` on every rank, the same number of times; each is one
    forward, backward, tied-gradient sum and optimizer step over `num_microbatches`."""

    def __init__(
        self,
        plan: Plan,
        model: nn.Module,
        *,
        loss_fn: LossFn,
        optimizer: OptimizerFactory,
        num_microbatches: int,
        example_args: Sequence[Any],
        example_kwargs: Mapping[str, Any] | None = None,
        replicate: Collection[str] = (),
        data_parallel: int = 1,
        gradient_clipping: float = 0.0,
        activation_checkpointing: bool = False,
        config: Mapping[str, Any] | None = None,
        trusted_modules: Collection[str] = (),
    ) -> None:
        init_comm()
        self.plan = plan
        self.num_microbatches = num_microbatches
        self.module, self.wires = pipeline_module(
            plan, model, loss_fn=loss_fn, num_microbatches=num_microbatches, example_args=example_args,
            example_kwargs=example_kwargs, replicate=replicate, data_parallel=data_parallel,
            trusted_modules=trusted_modules,
        )
        first = plan.stages[0]
        bound = bind_inputs(first, example_args, example_kwargs or {})
        self.inputs = FirstInputs.of(first, bound, replicate)
        split = [v for v, n in zip(bound, first.inputs) if n not in self.inputs.keywords]
        if data_parallel > 1 and any(p.dtype == torch.float64 for p in self.module.parameters()):
            raise PlanError("DeepSpeed's data-parallel all-reduce takes no float64 gradients on this accelerator; "
                            "train float64 models with data_parallel=1.")
        assert isinstance(self.module.loss_fn, WireLoss)
        self.loss: WireLoss = self.module.loss_fn
        settings = ds_config(
            micro_batch_size=split[0].shape[0] // num_microbatches if split else 1, num_microbatches=num_microbatches,
            data_parallel=data_parallel, gradient_clipping=gradient_clipping,
            activation_checkpointing=activation_checkpointing, overrides=config,
        )
        self.parameters = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = optimizer(self.parameters)
        engine, _, _, _ = deepspeed.initialize(model=self.module, optimizer=self.optimizer, config=settings)
        assert isinstance(engine, PipelineEngine)  # what DeepSpeed makes of a PipelineModule
        if data_parallel == 1:
            # The data-parallel all-reduce over one replica changes nothing, and DeepSpeed's
            # CPU accelerator refuses float64 gradients in it. DeepSpeed's own 1-bit optimizers
            # turn it off through this switch.
            engine.pipeline_enable_backward_allreduce = False
        self.engine = engine
        self.feeder = feeder(self.wires, torch.device(engine.device))

    @property
    def is_first(self) -> bool:
        return bool(self.engine.is_first_stage())

    @property
    def is_last(self) -> bool:
        return bool(self.engine.is_last_stage())

    def step(self, *args: Any, target: Any = None, **kwargs: Any) -> list[torch.Tensor]:
        """Train on one batch (the model's inputs on the first stage's rank, `target` on the
        last one's; other ranks may pass nothing). Returns the per-microbatch losses on the
        last stage's rank, else []."""
        n = self.num_microbatches
        inputs: list[Any] = [None] * n
        labels: list[Any] = [None] * n
        if self.is_first:
            inputs = [self.feeder(*mb) for mb in self.inputs.microbatches(args, kwargs, n)]
        if self.is_last:
            labels = list(target.tensor_split(n))
        self.loss.losses.clear()
        self.engine.train_batch(data_iter=iter(list(zip(inputs, labels))))
        return list(self.loss.losses)
