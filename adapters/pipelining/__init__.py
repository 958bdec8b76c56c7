"""Run a plan on torch.distributed.pipelining: stages, schedules, tied-weight sync."""

from adapters.engine.codec import UnsupportedBoundaryValue
from adapters.pipelining.schedule import Pipeline, ScheduleKind, schedule, stage_ranks
from adapters.pipelining.stage import build_stages, pipeline_stage

__all__ = ["Pipeline", "ScheduleKind", "UnsupportedBoundaryValue", "build_stages", "pipeline_stage", "schedule", "stage_ranks"]
