"""stagecut's planning core: pure functions over immutable snapshots. Never imports torch."""

from core.balance import balance
from core.cuts import Cut
from core.errors import (
    BalanceError,
    CalledMoreThanOnce,
    CutAtRoot,
    CutError,
    CutInsideLeaf,
    DuplicateCut,
    EmptyStage,
    MalformedSnapshot,
    NotCalled,
    PlanError,
    UnknownPath,
    UnsupportedGraph,
)
from core.graph import Arg, DictOf, Graph, ListOf, Node, Opaque, Ref, SliceOf, ValueInfo
from core.plan import Plan, Stage, StageFigures, plan
from core.snapshot import Module, Param, Snapshot

__all__ = [
    "Arg", "BalanceError", "CalledMoreThanOnce", "Cut", "CutAtRoot", "CutError", "CutInsideLeaf", "DictOf",
    "DuplicateCut", "EmptyStage", "Graph", "ListOf", "MalformedSnapshot", "Module", "Node",
    "NotCalled", "Opaque", "Param", "Plan", "PlanError", "Ref", "SliceOf", "Snapshot", "Stage",
    "StageFigures", "UnknownPath", "UnsupportedGraph", "ValueInfo", "balance", "plan",
]
