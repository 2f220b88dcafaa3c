"""A Llama 3 transformer and torchtitan's way of parallelizing it (FSDP2 and
tensor parallel on a ("dp", "tp") mesh), small enough to read: the model the
"Will it fit?" example and benchmarks/bench_fake_tensors.py plan at scale.

The architecture and the plan follow torchtitan's llama3 (model.py and
parallelize.py): grouped-query attention with rotary embeddings, SwiGLU
feed-forward, RMSNorm; TP with sequence parallel norms and a loss-parallel
output, FSDP2 per block in bf16 with fp32 gradient reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)


@dataclass(frozen=True)
class LlamaArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int = 128_256
    norm_eps: float = 1e-5
    rope_theta: float = 500_000.0


LLAMA3 = {
    "debug": LlamaArgs(dim=256, n_layers=2, n_heads=16, n_kv_heads=8, ffn_dim=768, vocab_size=2048),
    "1B": LlamaArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192),
    "8B": LlamaArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14_336),
    "70B": LlamaArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28_672),
}


def rope(head_dim: int, seq_len: int, theta: float) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len).float(), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rotated = torch.view_as_real(pairs * freqs[None, :, None, :]).flatten(3)
    return rotated.type_as(x)


class Attention(nn.Module):
    def __init__(self, a: LlamaArgs) -> None:
        super().__init__()
        self.head_dim = a.dim // a.n_heads
        self.wq = nn.Linear(a.dim, a.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(a.dim, a.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(a.dim, a.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(a.n_heads * self.head_dim, a.dim, bias=False)
        self.repeats = a.n_heads // a.n_kv_heads

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        # -1 heads: under tensor parallel, this rank's share of them
        q = self.wq(x).view(b, s, -1, self.head_dim)
        k = self.wk(x).view(b, s, -1, self.head_dim)
        v = self.wv(x).view(b, s, -1, self.head_dim)
        q, k = apply_rope(q, freqs), apply_rope(k, freqs)
        k = k.repeat_interleave(self.repeats, dim=2)
        v = v.repeat_interleave(self.repeats, dim=2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, a: LlamaArgs) -> None:
        super().__init__()
        self.w1 = nn.Linear(a.dim, a.ffn_dim, bias=False)
        self.w2 = nn.Linear(a.ffn_dim, a.dim, bias=False)
        self.w3 = nn.Linear(a.dim, a.ffn_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, a: LlamaArgs) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(a.dim, eps=a.norm_eps)
        self.attention = Attention(a)
        self.ffn_norm = nn.RMSNorm(a.dim, eps=a.norm_eps)
        self.feed_forward = FeedForward(a)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), freqs)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, a: LlamaArgs, seq_len: int) -> None:
        super().__init__()
        self.args = a
        self.tok_embeddings = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleDict({str(i): Block(a) for i in range(a.n_layers)})
        self.norm = nn.RMSNorm(a.dim, eps=a.norm_eps)
        self.output = nn.Linear(a.dim, a.vocab_size, bias=False)
        self.register_buffer("freqs", rope(a.dim // a.n_heads, seq_len, a.rope_theta), persistent=False)

    def init_weights(self) -> None:
        """torchtitan's initialisation: truncated normal, depth-scaled, and
        the rotary table computed where the model now lives."""
        with torch.device(self.freqs.device):
            self.freqs = rope(self.args.dim // self.args.n_heads, self.freqs.shape[0], self.args.rope_theta)
        if self.tok_embeddings is not None:
            nn.init.normal_(self.tok_embeddings.weight)
        std = 0.02 / (2 * self.args.n_layers) ** 0.5
        for block in self.layers.values():
            for linear in (block.attention.wq, block.attention.wk, block.attention.wv, block.feed_forward.w1):
                nn.init.trunc_normal_(linear.weight, mean=0.0, std=0.02)
            for linear in (block.attention.wo, block.feed_forward.w2, block.feed_forward.w3):
                nn.init.trunc_normal_(linear.weight, mean=0.0, std=std)
        if self.output is not None:
            nn.init.trunc_normal_(self.output.weight, mean=0.0, std=self.args.dim**-0.5, a=-3, b=3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # A pipeline stage (pipeline_stage) lacks what another stage holds.
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        for block in self.layers.values():
            h = block(h, self.freqs)
        return self.output(self.norm(h)) if self.output is not None else h


def pipeline_stage(model: Llama, stage: int, stages: int) -> Llama:
    """``model`` cut to pipeline stage ``stage`` of ``stages``, as torchtitan's
    pipeline split cuts it: an equal share of the blocks, the embedding on
    the first stage, the final norm and the output on the last."""
    per_stage = len(model.layers) // stages
    keep = {str(i) for i in range(stage * per_stage, (stage + 1) * per_stage)}
    for name in list(model.layers):
        if name not in keep:
            del model.layers[name]
    if stage > 0:
        model.tok_embeddings = None
    if stage < stages - 1:
        model.norm = model.output = None
    return model


def apply_tp(model: Llama, tp: DeviceMesh) -> None:
    """torchtitan's tensor-parallel plan: sequence-parallel norms, column-
    and row-wise projections, a vocabulary-sharded output for loss_parallel."""
    plan = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False),
    }
    parallelize_module(model, tp, {name: style for name, style in plan.items() if getattr(model, name) is not None})
    for block in model.layers.values():
        parallelize_module(block, tp, {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None), desired_input_layouts=(Replicate(), None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            "feed_forward.w3": ColwiseParallel(),
        })


def apply_fsdp(model: Llama, dp: DeviceMesh) -> None:
    """torchtitan's FSDP2 wrapping: each block, then the rest; parameters
    gathered in bf16, gradients reduced in fp32."""
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.layers.values():
        fully_shard(block, mesh=dp, mp_policy=policy)
    fully_shard(model, mesh=dp, mp_policy=policy)


def parallelize(model: Llama, mesh: DeviceMesh) -> Llama:
    """FSDP2 over "dp", and tensor parallel over "tp" when the mesh has it."""
    if "tp" in (mesh.mesh_dim_names or ()):
        apply_tp(model, mesh["tp"])
    apply_fsdp(model, mesh["dp"])
    return model


def build(name: str, seq_len: int, mesh: DeviceMesh, device: str = "cpu") -> Llama:
    """As torchtitan builds a model: on the meta device, parallelized there,
    then given memory on ``device`` and initialised."""
    with torch.device("meta"):
        model = Llama(LLAMA3[name], seq_len)
    parallelize(model, mesh)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights()
    return model


def train_step(model: Llama, optimizer: torch.optim.Optimizer, batch: int, seq_len: int) -> torch.Tensor:
    """Forward, loss, backward, optimizer step: one step of training."""
    tokens = torch.randint(0, model.args.vocab_size, (batch, seq_len))
    logits = model(tokens)
    with loss_parallel():  # the output stays sharded by vocabulary under TP
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss
