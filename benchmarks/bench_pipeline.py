"""Will every stage fit? One 1F1B step of a pipeline plan over fake tensors,
in a hybrid world (``values="exact"``, ``exact_dims="pp"``).

Each plan runs in a fresh subprocess: the ranks of one pipeline run, one
stage each, FSDP2 over "dp" and tensor parallel over "tp" inside each stage
(examples/llama.py cut by ``pipeline_stage``), one step of
torch.distributed.pipelining's 1F1B and AdamW. Reported: wall time of the
world (up to down), peak RSS of the subprocess, and the highest and lowest
stage memory peak. The baseline row is the "debug" model's plan at 16 ranks
in the same command; each wall time is also a multiple of it. Stages run one
at a time, so the cost grows with the ops of the whole pipeline - stages x
blocks a stage x microbatches - and not with the world size.

    python benchmarks/bench_pipeline.py [--plans 8B-pp8,8B-pp8-m16,8B-pp4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# name -> (model, mesh, microbatches, sequence length)
PLANS = {
    "debug-pp2": ("debug", {"pp": 2, "dp": 4, "tp": 2}, 4, 256),
    "8B-pp8": ("8B", {"pp": 8, "dp": 16, "tp": 8}, 8, 8192),
    "8B-pp8-m16": ("8B", {"pp": 8, "dp": 16, "tp": 8}, 16, 8192),
    "8B-pp4": ("8B", {"pp": 4, "dp": 32, "tp": 8}, 8, 8192),
}


def child(name: str) -> dict[str, object]:
    import resource
    import time
    import warnings

    import torch
    import torch.nn.functional as F
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B
    from torch.distributed.tensor.parallel import loss_parallel

    sys.path.insert(0, str(EXAMPLES))
    from llama import LLAMA3, Llama, parallelize, pipeline_stage

    from pytest_fakepg import ExactWorld

    warnings.simplefilter("ignore")
    model_name, mesh, microbatches, seq_len = PLANS[name]
    stages = mesh["pp"]

    def loss_fn(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())

    start = time.perf_counter()
    with ExactWorld(mesh=mesh, exact_dims="pp", tensors="fake") as world:
        def program() -> int:
            stage = world.mesh["pp"].get_local_rank()
            with torch.device("meta"):
                model = pipeline_stage(Llama(LLAMA3[model_name], seq_len), stage, stages)
            parallelize(model, world.mesh)
            model.to_empty(device="cpu")
            with torch.no_grad():
                model.init_weights()
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
            world.memory.reset()
            schedule = Schedule1F1B(
                PipelineStage(model, stage, stages, torch.device("cpu"), group=world.mesh["pp"].get_group()),
                n_microbatches=microbatches, loss_fn=loss_fn,
            )
            tokens = torch.randint(0, LLAMA3[model_name].vocab_size, (microbatches, seq_len))
            with loss_parallel():
                schedule.step(tokens, target=tokens) if stage == 0 else schedule.step(target=tokens)
            optimizer.step()
            return world.memory.peak

        peaks = world.run(program)
        world_size = world.world_size
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"plan": name, "world": world_size, "wall_s": wall, "rss_gib": rss,
            "max_stage_gib": max(peaks) / 2**30, "min_stage_gib": min(peaks) / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", default="8B-pp8,8B-pp8-m16,8B-pp4")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    rows = []
    for name in ["debug-pp2", *args.plans.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["wall_s"]
    print(f"{'plan':<12} {'world':>6} {'wall s':>8} {'x base':>7} {'RSS GiB':>8} {'stage peaks GiB':>16}")
    for r in rows:
        print(f"{r['plan']:<12} {r['world']:>6} {r['wall_s']:>8.1f} {r['wall_s'] / base:>7.1f} {r['rss_gib']:>8.2f} "
              f"{r['min_stage_gib']:>7.1f}-{r['max_stage_gib']:<7.1f}")


if __name__ == "__main__":
    main()
