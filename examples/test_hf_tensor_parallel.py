"""A library's own tensor-parallel plan, loaded the documented way, in a fake
world: Hugging Face transformers reads torchrun's WORLD_SIZE to decide how
many ways to shard, and loads the checkpoint in a thread pool. Both work
here: the world sets torchrun's variables, and a thread a rank starts acts
as that rank."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it for tp_plan

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"),
    # transformers puts a tensor-parallel model on the accelerator when there
    # is one, on device LOCAL_RANK: that is a device="cuda" world's test
    pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of transformers' TP loading; CUDA is present"),
]


def save_tiny_llama():
    """A tiny Llama saved to disk, and what it computes on one device. Made
    while pytest collects, when no world is up: inside a world of rank 1,
    save_pretrained rightly leaves the writing to rank 0."""
    import tempfile

    transformers.utils.logging.disable_progress_bar()
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
        tokens = torch.randint(0, 128, (1, 8))
    path = tempfile.mkdtemp(prefix="tiny-llama-")
    model.save_pretrained(path)
    with torch.no_grad():
        return path, tokens, model(tokens).logits


CHECKPOINT = save_tiny_llama()


@pytest.fixture
def checkpoint():
    return CHECKPOINT


def load_tensor_parallel(path):
    return transformers.LlamaForCausalLM.from_pretrained(
        path, distributed_config=transformers.DistributedConfig(tp_plan="auto")
    )


@pytest.mark.fake_world(4, rank=1)
def test_the_tp_plan_really_shards(checkpoint, collectives):
    path, tokens, _ = checkpoint
    model = load_tensor_parallel(path)
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    assert q_proj.to_local().shape == (16, 64)  # 64 x 64, column-sharded 4 ways
    collectives.clear()
    model(tokens)
    assert collectives.count("all_reduce") == 5  # each layer's o_proj and down_proj, and the norm's input


@pytest.mark.fake_world(4, values="exact")
def test_every_rank_computes_what_one_device_computes(checkpoint):
    path, tokens, expected = checkpoint
    model = load_tensor_parallel(path)  # in a thread pool, which acts as this rank
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, expected)
