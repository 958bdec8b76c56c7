"""How the core scales with the depth of the module tree (run on demand, not part of pytest).

    PYTHONPATH=. .venv/bin/python bench/depth.py                    # depths 500 .. 8000
    PYTHONPATH=. .venv/bin/python bench/depth.py --depths 1000 2000 4000

The model is a chain: `m` inside `m` ... `depth` levels, each traced (it calls the next and adds
one), the deepest holding four numbered blocks; the cut is after the deepest block 1, so every
level is on the spine and inlined. Every module's path repeats its ancestors' (`m.m.m...`), so
the snapshot itself holds about depth^2 / 2 path characters: "linear in size" means time per
character of JSON stays flat, and per module it grows with the depth.

Phases: `check_cuts` (the spine: 55 s at depth 5000 before it was made linear, cubic then),
`plan`, `to_json` and `from_json` of the snapshot, `balance` with costs.params (its own passes:
candidates, chain, partition), and the plan's JSON both ways. Each depth runs in a fresh process
with Python's default recursion limit: nothing may recurse per level.

    PYTHONPATH=. .venv/bin/python bench/depth.py --fx               # depths 250 .. 2000
    PYTHONPATH=. .venv/bin/python bench/depth.py --fx --depths 5000

`--fx` measures the fx frontend on the same chain as a torch model (`Level` inside `Level` ...,
four Linear blocks at the bottom): `snapshot(model, x, cuts=[cut], tracer="fx")` (one fx trace
per level, the binding run and value info on fake tensors), `plan`, `stage_modules` and one run
of the stages, checked equal to the model. The first snapshot in a process pays torch's imports
(fake tensors), so a warm-up snapshot of a 2-level chain runs first. Time per level stays flat
for the snapshot (fx's own cost of one trace dominates); stage building grows with the length
of the inlined nodes' names (`m.m.m...add`), which is the plan's size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import Plan, Snapshot, balance, costs, plan  # noqa: E402
from core.validate import check_cuts  # noqa: E402
from tests.test_hardening_depth import chain  # noqa: E402  (the snapshot chain the depth test plans)

PHASES = ("build", "check_cuts", "plan", "to_json", "from_json", "balance", "plan_json")
FX_PHASES = ("snapshot", "plan", "stages", "run")


class Phases:
    """CPU seconds per named phase."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, name: str, fn):  # type: ignore[no-untyped-def]
        start = time.process_time()
        value = fn()
        self.times[name] = time.process_time() - start
        return value


def measure(depth: int) -> dict[str, float]:
    phase = Phases()
    snapshot, cut = phase("build", lambda: chain(depth))
    phase("check_cuts", lambda: check_cuts(snapshot, [cut]))
    result = phase("plan", lambda: plan(snapshot, [cut]))
    text = phase("to_json", snapshot.to_json)
    back = phase("from_json", lambda: Snapshot.from_json(text))
    assert back.to_json() == text
    phase("balance", lambda: balance(snapshot, 2, cost=costs.params))
    phase("plan_json", lambda: Plan.from_json(result.to_json()))
    times = phase.times
    times["chars"] = float(len(text))
    times["depth"] = float(depth)
    times["recursion_limit"] = float(sys.getrecursionlimit())
    return times


def measure_fx(depth: int) -> dict[str, float]:
    import torch

    from adapters.fx import run_stages, snapshot, stage_modules
    from adapters.graph.deep import run_deep
    from tests.test_fx_depth import chain as torch_chain  # the torch model the fx depth test traces

    x = torch.randn(2, 8)
    warm, warm_cut = torch_chain(2)
    snapshot(warm, x, cuts=[warm_cut], tracer="fx")
    model, cut = torch_chain(depth)
    phase = Phases()
    snap = phase("snapshot", lambda: snapshot(model, x, cuts=[cut], tracer="fx"))
    result = phase("plan", lambda: plan(snap, [cut]))
    stages = phase("stages", lambda: stage_modules(result, model))
    with torch.no_grad():
        out = phase("run", lambda: run_stages(stages, x))
        assert torch.equal(out, run_deep(depth, lambda: model(x)))
    times = phase.times
    times["depth"] = float(depth)
    times["recursion_limit"] = float(sys.getrecursionlimit())
    return times


def main_fx(depths: list[int]) -> None:
    head = f"{'depth':>6} " + " ".join(f"{p:>10}" for p in FX_PHASES) + f" {'ms/level':>9} {'snapshot ms/level':>18}"
    print(head)
    print("-" * len(head))
    for depth in depths:
        done = subprocess.run([sys.executable, __file__, "--fx-child", str(depth)], capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        work = sum(row[p] for p in FX_PHASES)
        print(f"{depth:>6} " + " ".join(f"{row[p]:>10.2f}" for p in FX_PHASES)
              + f" {1e3 * work / depth:>9.2f} {1e3 * row['snapshot'] / depth:>18.2f}")
    print("seconds of CPU per phase (snapshot with value info, plan, stage_modules, one run of the stages)")
    print(f"recursion limit after each run: {int(row['recursion_limit'])} (Python's default: the parts that recurse per "
          "level run in a worker thread with room for them, adapters.graph.deep)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+")
    parser.add_argument("--fx", action="store_true", help="the fx frontend on a torch model (snapshot, plan, stages)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fx-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    if args.fx_child is not None:
        print(json.dumps(measure_fx(args.fx_child)))
        return
    if args.fx:
        main_fx(args.depths or [250, 500, 1000, 2000])
        return
    args.depths = args.depths or [500, 1000, 2000, 4000, 8000]
    head = f"{'depth':>6} {'JSON MB':>8} " + " ".join(f"{p:>10}" for p in PHASES) + f" {'ns/char':>8}"
    print(head)
    print("-" * len(head))
    for depth in args.depths:
        done = subprocess.run([sys.executable, __file__, "--child", str(depth)], capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        work = sum(row[p] for p in PHASES if p != "build")
        print(f"{depth:>6} {row['chars'] / 1e6:>8.1f} " + " ".join(f"{row[p]:>10.3f}" for p in PHASES)
              + f" {1e9 * work / row['chars']:>8.1f}")
    print("seconds of CPU per phase; ns/char: all phases but build, per character of the snapshot's JSON")
    print(f"recursion limit in each run: {sys.getrecursionlimit()} (Python's default)")


if __name__ == "__main__":
    main()
