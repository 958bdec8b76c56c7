"""What both frontends share: fx graphs <-> core graphs, the handle table, the module tree,
and the stage modules built back from a plan."""
