"""Pass 5: tie grouping. One storage used under several names, or in several stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core.snapshot import Param, Snapshot

TieGroup = tuple[tuple[str, int], ...]


def tie_groups(
    snapshot: Snapshot, stage_params: Sequence[Sequence[str]], known: Mapping[str, Param] | None = None
) -> tuple[TieGroup, ...]:
    """Groups of `(qualified name, stage)` that share one storage key.

    Partitioned, a group is a key used by more than one stage (they must be kept in sync);
    unpartitioned, a key under more than one name (all at stage 0), as Slapo reports it.
    `known` maps names to their `Param` where the caller has looked them up already.
    """
    by_key: dict[str, set[tuple[str, int]]] = {}
    for stage, names in enumerate(stage_params):
        for name in names:
            param = known[name] if known is not None and name in known else snapshot.param(name)
            if param is not None and not param.buffer:
                by_key.setdefault(param.key, set()).add((name, stage))
    partitioned = len(stage_params) > 1
    groups = []
    for members in by_key.values():
        spread = len({s for _, s in members}) if partitioned else len(members)
        if spread > 1:
            groups.append(tuple(sorted(members, key=lambda m: (m[1], m[0]))))
    return tuple(sorted(groups))
