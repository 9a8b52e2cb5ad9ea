"""T6: the deterministic simulation of a rollout, timed; replays any seed exactly.

    python bench/simulate.py --hosts 100000 --seed 1                 # T6: a 100,000-host canary
    python bench/simulate.py --hosts 30 --seed 7 --mode runner       # the real runner over SQLite
    python bench/simulate.py --hosts 50 --seed 1 --seeds 200 --profile mixed

Each run prints its seed, the rollout's end, the simulated and the wall-clock
time (and the process's CPU time: on a busy machine it is the fairer figure),
the number of world events and engine steps, and the SHA-256 of the event
log: the same arguments give the same hash, every time. ``--twice`` runs each
seed twice and fails if the hashes differ. A broken invariant prints the
seed, the command that replays it and the last lines of the event log, and
the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headway.sim import MODES, PROFILES, SimResult, SimulationFailure, simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1, help="the first seed")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds, from --seed on")
    parser.add_argument("--mode", choices=MODES, default="engine")
    parser.add_argument("--profile", choices=PROFILES, default="t6")
    parser.add_argument("--twice", action="store_true", help="run each seed twice; the log hashes must match")
    parser.add_argument("--tail", type=int, default=60, help="log lines shown on a failure")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args(argv)
    if args.mode == "runner" and args.hosts > 5000:
        print("runner mode stores every step in SQLite: use at most a few thousand hosts", file=sys.stderr)
        return 2
    failures = 0
    walls: list[float] = []
    for seed in range(args.seed, args.seed + args.seeds):
        runs = 2 if args.twice else 1
        hashes = []
        for _ in range(runs):
            cpu = time.process_time()
            try:
                result = simulate(seed, args.hosts, args.mode, args.profile, tail=args.tail)
            except SimulationFailure as failure:
                failures += 1
                print(f"FAILED {failure}", file=sys.stderr)
                break
            cpu = time.process_time() - cpu
            walls.append(result.wall_seconds)
            hashes.append(result.log_hash)
            _print(result, cpu, args.json)
        if len(hashes) == 2 and hashes[0] != hashes[1]:
            failures += 1
            print(f"FAILED seed {seed}: two runs gave different log hashes {hashes}", file=sys.stderr)
    if len(walls) > 1 and not args.json:
        print(f"{len(walls)} runs, {failures} failed; wall time median {statistics.median(walls):.2f}s")
    return 1 if failures else 0


def _print(result: SimResult, cpu: float, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.__dict__ | {"cpu_seconds": round(cpu, 3)}))
        return
    stats = result.stats
    print(
        f"seed {result.seed} {result.mode} {result.profile} hosts {result.hosts}: {result.status} "
        f"after {result.sim_seconds:.0f}s simulated; wall {result.wall_seconds:.2f}s cpu {cpu:.2f}s; "
        f"{result.events} events, {stats.get('engine_steps', 0)} engine steps, {result.log_lines} log lines; "
        f"log sha256 {result.log_hash}"
    )
    faults = {k: v for k, v in stats.items() if v and k not in ("engine_steps", "peak_out")}
    print(
        f"    peak out of service {stats.get('peak_out', 0)}; faults {faults}; {result.reason}".rstrip("; ")
    )


if __name__ == "__main__":
    sys.exit(main())
