"""A small model for the examples (the shape of torch's own MLPModule)."""

import torch
import torch.nn as nn


class MLPModule(nn.Module):
    def __init__(self, device="cpu"):
        super().__init__()
        torch.manual_seed(5)
        self.net1 = nn.Linear(10, 16, device=device)
        self.relu = nn.ReLU()
        self.net2 = nn.Linear(16, 10, device=device)

    def forward(self, x):
        return self.net2(self.relu(self.net1(x)))
