#!/usr/bin/python3
"""A straightforward PyTorch implementation of the MoHGE FFN layer of layer-mohge.json
(router with both aux losses, experts looped with index_select/index_add, shared experts),
timed forward+backward on random tokens: the comparison figure for `mohge bench layer`.

Run with Debian's python3-torch (deploy/install-deps.sh --with-torch):
    OMP_WAIT_POLICY=passive /usr/bin/python3 tests/bench/pytorch_layer_bench.py [--tokens 2048] [--threads 2]
Prints one JSON line (median of --iters timed steps after 2 warm-up steps). OMP_WAIT_POLICY
defaults to passive (set here before torch loads OpenMP): with spinning OpenMP threads PyTorch
runs several times slower on a 2-core machine that has anything else to do.
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import torch  # noqa: E402 (after the OpenMP setting)


class MohgeLayer(torch.nn.Module):
    def __init__(self, d, widths, n, top_groups, top_experts, shared, shared_width,
                 alpha_group=1e-4, alpha_expert=2.5e-3):
        super().__init__()
        self.G, self.n, self.kg, self.k = len(widths), n, top_groups, top_experts
        self.widths = widths
        self.alpha_group, self.alpha_expert = alpha_group, alpha_expert
        self.group_gate = torch.nn.Linear(d, self.G, bias=False)
        self.expert_gate = torch.nn.Linear(d, self.G * n, bias=False)

        def expert(w):
            return torch.nn.ModuleDict({
                "gate": torch.nn.Linear(d, w, bias=False),
                "up": torch.nn.Linear(d, w, bias=False),
                "down": torch.nn.Linear(w, d, bias=False)})
        self.experts = torch.nn.ModuleList([expert(widths[e // n]) for e in range(self.G * n)])
        self.shared = torch.nn.ModuleList([expert(shared_width) for _ in range(shared)])
        for p in self.parameters():
            torch.nn.init.normal_(p, std=0.02)

    @staticmethod
    def ffn(e, x):
        return e["down"](torch.nn.functional.silu(e["gate"](x)) * e["up"](x))

    def forward(self, x):
        N = x.shape[0]
        G, n = self.G, self.n
        gs = torch.sigmoid(self.group_gate(x))
        top_g = gs.topk(self.kg, dim=-1).indices
        kept_g = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, top_g, True)
        es = torch.softmax(self.expert_gate(x).view(N, G, n), dim=-1) * kept_g[:, :, None]
        u = (es * (gs * kept_g)[:, :, None]).reshape(N, G * n)
        w, idx = u.topk(self.k, dim=-1)
        w = w / w.sum(-1, keepdim=True)

        y = sum(self.ffn(s, x) for s in self.shared)
        for e in range(G * n):
            rows, slots = torch.nonzero(idx == e, as_tuple=True)
            if rows.numel():
                out = self.ffn(self.experts[e], x.index_select(0, rows))
                y = y.index_add(0, rows, out * w[rows, slots][:, None])

        widths = torch.tensor(self.widths, dtype=x.dtype)
        fg = G / (self.kg * N) * kept_g.sum(0).to(x.dtype)
        pg = (gs / gs.sum(-1, keepdim=True)).mean(0)
        aux_g = self.alpha_group * (widths / widths.max() * fg * pg).sum()
        count = torch.zeros(G * n, dtype=x.dtype).index_add_(0, idx.reshape(-1), torch.ones(N * self.k))
        fe = n / (self.k * N) * count
        pe = (es / (es.sum(-1, keepdim=True) + 1e-6)).reshape(N, G * n).mean(0)
        aux_e = self.alpha_expert * (fe * pe).sum()
        return y, aux_g + aux_e


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "layer-mohge.json"))
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    spec = json.load(open(a.config))
    m, f = spec["model"], spec["model"]["ffn"]
    layer = MohgeLayer(m["d_model"], f["widths"], f["experts_per_group"], f["top_groups"],
                       f["top_experts"], f["shared_experts"], f["shared_width"],
                       f.get("alpha_group", 1e-4), f.get("alpha_expert", 2.5e-3))
    x = torch.randn(a.tokens, m["d_model"], requires_grad=True)
    dy = torch.randn(a.tokens, m["d_model"])

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y, aux = layer(x)
        ((y * dy).sum() + aux).backward()

    for _ in range(2):
        step()
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"impl": "pytorch", "ms_per_fwd_bwd": statistics.median(times),
                      "tokens": a.tokens, "threads": a.threads, "torch": torch.__version__,
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}))


if __name__ == "__main__":
    main()
