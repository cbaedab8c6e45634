"""The plain-torchdiffeq baseline: the seed's model written plainly with torchdiffeq, as a user would (the reference
of ``odenet bench speed``).

torchvision dataset + DataLoader batches (or the whole set as one tensor: ``tensor_batches``),
``torchdiffeq.odeint_adjoint`` with dopri5, Adam. Nothing here
uses odenet's engine or data path; only the model print is shared, so both train the same network.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchdiffeq
from torchvision import datasets, transforms


class ODEFunc(nn.Module):
    def __init__(self, dim=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                 nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, dim))
        self.nfe = 0

    def forward(self, t, z):
        self.nfe += 1
        return self.net(z)


class ODEBlock(nn.Module):
    def __init__(self, odefunc, method="dopri5", rtol=1e-3, atol=1e-4, t_end=1.0):
        super().__init__()
        self.odefunc = odefunc
        self.method, self.rtol, self.atol = method, rtol, atol
        self.register_buffer("t", torch.tensor([0.0, t_end]), persistent=False)

    def forward(self, z):
        return torchdiffeq.odeint_adjoint(self.odefunc, z, self.t, rtol=self.rtol, atol=self.atol,
                                          method=self.method)[-1]


class NeuralODEModel(nn.Module):
    def __init__(self, dim=64, **solver):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                     nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, dim), nn.Tanh())
        self.odefunc = ODEFunc(dim)
        self.odeblock = ODEBlock(self.odefunc, **solver)
        self.classifier = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(self.odeblock(self.encoder(x)))


def train_loader(root: str, batch_size: int = 64) -> torch.utils.data.DataLoader:
    """MNIST training batches through torchvision transforms and a DataLoader (``root`` must be writable)."""
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    ds = datasets.MNIST(root, train=True, download=True, transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True)


def tensor_batches(root: str, batch_size: int = 64, device: torch.device = torch.device("cpu")):
    """MNIST kept as one normalized tensor on ``device`` (no DataLoader), shuffled batches forever: the faster
    plain script (``root`` must be writable)."""
    ds = datasets.MNIST(root, train=True, download=True)
    x = ds.data.float().div(255).sub(0.1307).div(0.3081).unsqueeze(1).to(device)
    y = ds.targets.to(device)
    while True:
        for idx in torch.randperm(len(y), device=device).split(batch_size):
            yield x[idx], y[idx]


def train_step(model: NeuralODEModel, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    """One step; returns (loss, forward NFE, backward NFE)."""
    model.odefunc.nfe = 0
    loss = F.cross_entropy(model(x), y)
    nfe_f = model.odefunc.nfe
    model.odefunc.nfe = 0
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item(), nfe_f, model.odefunc.nfe
