"""Will it fit, and what will it send? A training plan at 1,024 ranks, in a
unit test, on fake tensors: no memory, no compute, seconds on a laptop.

The model is Llama 3 1B, built and parallelized as torchtitan does it
(llama.py): FSDP2 over "dp" x tensor parallel over "tp". The test asserts
one rank's memory peak stays under a budget and pins what each mesh
dimension sends per training step, so a change to the plan that adds
traffic fails here, with the numbers, instead of on the cluster.
"""

import pytest
import torch

from llama import build, train_step

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

GiB = 2**30
SEQ_LEN = 4096


# rank=0: one rank's plan (ranks differ only in which shard they hold), also
# under --fake-world-ranks=all, which would otherwise run 1,024 cases.
@pytest.mark.fake_world(1024, rank=0, mesh={"dp": 128, "tp": 8}, tensors="fake")
def test_llama_1b_fits_and_sends_what_the_plan_says(device_mesh, memory, collectives):
    model = build("1B", SEQ_LEN, device_mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    memory.reset()
    collectives.clear()  # one step: not the parameter sharding before it

    train_step(model, optimizer, batch=1, seq_len=SEQ_LEN)

    # Memory: the rank's peak, by what holds it, under an 8 GiB budget.
    assert memory.peak < 8 * GiB
    assert memory.at_peak["activations"] > 10 * memory.at_peak["parameters"]  # activations dominate
    # After the step: this rank's shard of the weights and AdamW's two moments.
    assert memory.current["optimizer"] == pytest.approx(2 * memory.current["parameters"], rel=0.2)

    # Traffic per mesh dimension, byte-exact: FSDP2 gathers each block's
    # bf16 shard in forward and again in backward (16 blocks x 2 + the rest)
    # and reduce-scatters fp32 gradients; TP gathers and scatters the
    # sequence around every attention and feed-forward.
    ledger = collectives.ledger()
    assert ledger["dp"] == {
        "all_gather_into_tensor": {"calls": 33, "bytes": 4_966_432, "dtypes": ["bfloat16"]},
        "reduce_scatter_tensor": {"calls": 17, "bytes": 767_827_968, "dtypes": ["float32"]},
    }
    # TP's all-reduces (the norms' gradients): torch 2.15 runs them all in
    # float32, where 2.11-2.14 run some in bfloat16.
    tp_all_reduce = 319_488 if torch.__version__ >= "2.15" else 184_320
    assert ledger["tp"]["all_reduce"]["calls"] == 36
    sent = {dim: sum(op["bytes"] for op in ops.values()) for dim, ops in ledger.items()}
    assert sent == {"dp": 772_794_400, "tp": 1_245_708_288 + tp_all_reduce}
