"""The engine's networks written the usual PyTorch eager way, as a benchmark baseline.

nn.Linear / nn.BatchNorm1d / nn.ReLU / nn.Dropout in an nn.Sequential,
CrossEntropyLoss or BCEWithLogitsLoss, and torch.optim.Adam (fused or foreach) or SGD
with momentum.  It mirrors the engine's configuration:

- batch norm on hidden layers, those Linear layers without bias, momentum 1 - bn_beta,
  eps bn_eps (PyTorch's BatchNorm1d normalizes with the biased batch variance and
  tracks the unbiased one, as the engine does);
- L2 as weight_decay on the weight matrices only (a separate parameter group), which is
  the engine's coupled ``dW += l2 W``; the returned loss leaves the penalty out;
- the engine's momentum ``v = b1 v + (1 - b1) g; theta -= lr v`` is SGD(momentum=b1,
  dampening=b1) with the momentum buffers started at zero (PyTorch would otherwise
  start them at the first gradient);
- the running (all-time, Welford/Chan) z-score of the inputs in float64 torch ops,
  staged before each step, as the engine's normalize_inputs=True does.

Labels come in already as the tensors PyTorch wants (int64 class ids, or float (m, 1)),
prepared once outside the timed loop, which favours PyTorch slightly.

Not part of the package; imported only by benchmarks/engine.py, and only when torch is
installed.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

MIN_STD = 1e-8


class TorchMLP:
    def __init__(self, sizes, task="multiclass", batch_norm=True, keep_prob=1.0, l2=0.0,
                 optimizer="adam", adam_impl="fused", lr=1e-3, beta1=0.9, beta2=0.999,
                 eps=1e-8, bn_beta=0.9, bn_eps=1e-5, normalize_inputs=True):
        sizes = tuple(int(s) for s in sizes)
        L = len(sizes) - 1
        self.L = L
        self.task = task
        layers = []
        self.linears, self.bns = [], []
        for l in range(1, L + 1):
            hidden = l < L
            lin = nn.Linear(sizes[l - 1], sizes[l], bias=not (hidden and batch_norm))
            layers.append(lin)
            self.linears.append(lin)
            if hidden:
                if batch_norm:
                    bn = nn.BatchNorm1d(sizes[l], eps=bn_eps, momentum=1.0 - bn_beta)
                    layers.append(bn)
                    self.bns.append(bn)
                layers.append(nn.ReLU())
                if keep_prob < 1.0:
                    layers.append(nn.Dropout(p=1.0 - keep_prob))
        self.net = nn.Sequential(*layers)
        self.loss_fn = nn.CrossEntropyLoss() if task == "multiclass" else nn.BCEWithLogitsLoss()

        weights = [lin.weight for lin in self.linears]
        others = [p for p in self.net.parameters() if all(p is not w for w in weights)]
        groups = [{"params": weights, "weight_decay": l2}, {"params": others, "weight_decay": 0.0}]
        if optimizer == "adam":
            kw = {"fused": True} if adam_impl == "fused" else {"foreach": True}
            self.opt = torch.optim.Adam(groups, lr=lr, betas=(beta1, beta2), eps=eps, **kw)
        elif optimizer == "momentum":
            self.opt = torch.optim.SGD(groups, lr=lr, momentum=beta1, dampening=beta1)
            for p in self.net.parameters():
                self.opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        else:
            raise ValueError(f"optimizer must be adam or momentum, got {optimizer!r}")

        n0 = sizes[0]
        self.normalize_inputs = normalize_inputs
        self.count = 0.0
        self.mean = torch.zeros(n0, dtype=torch.float64)
        self.m2 = torch.zeros(n0, dtype=torch.float64)
        self.shift = torch.zeros(n0)
        self.inv_scale = torch.ones(n0)

    def load_params(self, params, stats=None):
        """Copy the engine's parameters (W1, gamma1, beta1, ..., b_L) and statistics."""
        stats = stats or {}
        with torch.no_grad():
            for l, lin in enumerate(self.linears, start=1):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(params[f"W{l}"])))
                if lin.bias is not None:
                    lin.bias.copy_(torch.from_numpy(params[f"b{l}"]))
            for l, bn in enumerate(self.bns, start=1):
                bn.weight.copy_(torch.from_numpy(params[f"gamma{l}"]))
                bn.bias.copy_(torch.from_numpy(params[f"beta{l}"]))
                if f"running_mean{l}" in stats:
                    bn.running_mean.copy_(torch.from_numpy(stats[f"running_mean{l}"]))
                    bn.running_var.copy_(torch.from_numpy(stats[f"running_var{l}"]))

    def _stage_inputs(self, x):
        if not self.normalize_inputs:
            return None, self.shift, self.inv_scale
        m = x.shape[0]
        total = self.count + m
        bvar, bmean = torch.var_mean(x.double(), dim=0, correction=0)
        delta = bmean - self.mean
        new_m2 = self.m2 + bvar * m + delta * delta * (self.count * m / total)
        new_mean = self.mean + delta * (m / total)
        std = (new_m2 / total).sqrt_()
        inv = torch.where(std >= MIN_STD, std.reciprocal(), 1.0)
        shift, inv = new_mean.float(), inv.float()
        return (total, new_mean, new_m2, shift, inv), shift, inv

    def partial_fit(self, X, target):
        """One step on X (m, n0) float32 ndarray and target (a tensor); returns the loss."""
        x = torch.from_numpy(X)
        staged, shift, inv = self._stage_inputs(x)
        x = (x - shift).mul_(inv)
        loss = self.loss_fn(self.net(x), target)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if staged is not None:
            self.count, self.mean, self.m2, self.shift, self.inv_scale = staged
        return loss.item()

    def predict_proba(self, X):
        """Softmax rows or sigmoid outputs for X (m, n0) as an ndarray (eval mode)."""
        with torch.inference_mode():
            x = (torch.from_numpy(X) - self.shift).mul_(self.inv_scale)
            z = self.net(x)
            p = torch.softmax(z, dim=1) if self.task == "multiclass" else torch.sigmoid(z)
            return p.numpy()

    def train(self):
        self.net.train()

    def eval(self):
        self.net.eval()
