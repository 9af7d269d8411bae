#!/usr/bin/python3
"""Writes the PyTorch reference files checked by tests/worker/test_reference.cpp.

An independent implementation of the model defined in storage/FORMAT.md (plain PyTorch,
float64), run on tiny configurations of every ffn.kind. Each file holds the parameters, the
input tokens, the logits, the losses, the routing of every MoE/MoHGE layer and the gradient of
the total loss w.r.t. every parameter.

Run with Debian's python3-torch (deploy/install-deps.sh --with-torch):
    /usr/bin/python3 tests/reference/make_reference.py
"""
import json
import math
import os
import struct
import sys

import torch

FORMAT = "mohge-reference"
VERSION = "1"
HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 2


# ---------------------------------------------------------------------------------------
# Configurations


def spec_for(kind):
    if kind == "dense":
        ffn = {"kind": "dense", "width": 48}
    elif kind == "moe":
        ffn = {"kind": "moe", "experts": 4, "expert_width": 16, "top_experts": 2,
               "shared_experts": 1, "shared_width": 16, "alpha_balance": 0.05}
    else:
        variant = "reference" if kind == "mohge-reference" else "paper"
        ffn = {"kind": "mohge", "groups": 4, "experts_per_group": 2, "widths": [8, 12, 20, 24],
               "top_groups": 2, "top_experts": 3, "shared_experts": 1, "shared_width": 16,
               "alpha_group": 0.05, "alpha_expert": 0.05, "router_variant": variant,
               "group_loss": variant, "expert_loss": variant}
    return {
        "name": "reference-" + kind,
        "model": {"vocab_size": 64, "seq_len": 8, "layers": 2, "d_model": 32, "heads": 4,
                  "tie_embeddings": kind != "dense", "ffn": ffn},
        "data": {"train": "train.bin", "val": "val.bin"},
        "train": {"steps": 10, "batch_size": BATCH, "lr": 1e-3},
        "resources": {"workers": 1, "device": "cpu"},
    }


def parameter_shapes(spec):
    m = spec["model"]
    V, D, L = m["vocab_size"], m["d_model"], m["layers"]
    f = m["ffn"]
    shapes = {"model.embed_tokens.weight": (V, D)}
    for l in range(L):
        p = "model.layers.%d." % l
        shapes[p + "input_layernorm.weight"] = (D,)
        for proj in ("q", "k", "v", "o"):
            shapes[p + "self_attn.%s_proj.weight" % proj] = (D, D)
        shapes[p + "post_attention_layernorm.weight"] = (D,)

        def expert(name, width):
            shapes[name + ".gate_proj.weight"] = (width, D)
            shapes[name + ".up_proj.weight"] = (width, D)
            shapes[name + ".down_proj.weight"] = (D, width)

        if f["kind"] == "dense":
            expert(p + "mlp", f["width"])
        elif f["kind"] == "moe":
            shapes[p + "mlp.gate.weight"] = (f["experts"], D)
            for e in range(f["experts"]):
                expert(p + "mlp.experts.%d" % e, f["expert_width"])
        else:
            G, n = f["groups"], f["experts_per_group"]
            shapes[p + "mlp.group_gate.weight"] = (G, D)
            shapes[p + "mlp.expert_gate.weight"] = (G * n, D)
            for g in range(G):
                for i in range(n):
                    expert(p + "mlp.experts.%d.%d" % (g, i), f["widths"][g])
        for s in range(f.get("shared_experts", 0)):
            expert(p + "mlp.shared_experts.%d" % s, f["shared_width"])
    shapes["model.norm.weight"] = (D,)
    if not m["tie_embeddings"]:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def init_parameters(spec, gen):
    params = {}
    for name, shape in parameter_shapes(spec).items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
        elif "gate.weight" in name and "gate_proj" not in name:  # router weights
            t = 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
        else:
            t = 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
        params[name] = t.requires_grad_(True)
    return params


# ---------------------------------------------------------------------------------------
# The model, written from storage/FORMAT.md


def rmsnorm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rotate_half(v):
    half = v.shape[-1] // 2
    return torch.cat((-v[..., half:], v[..., :half]), dim=-1)


def attention(x, P, p, m):
    B, T, D = x.shape
    H = m["heads"]
    hd = D // H
    q = (x @ P[p + "q_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
    k = (x @ P[p + "k_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
    v = (x @ P[p + "v_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
    inv_freq = 1.0 / (m.get("rope_base", 10000.0) ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1).to(torch.float64)
    cos, sin = emb.cos(), emb.sin()
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(mask, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    out = out.transpose(1, 2).reshape(B, T, D)
    return out @ P[p + "o_proj.weight"].T


def swiglu(x, P, name):
    a = x @ P[name + ".gate_proj.weight"].T
    b = x @ P[name + ".up_proj.weight"].T
    return (torch.nn.functional.silu(a) * b) @ P[name + ".down_proj.weight"].T


def top_k_sorted(score, k):
    """Indices of the k largest entries of each row, descending; ties to the lower index
    (stable sort of the negated scores). Also returns the gap between the k-th and the
    (k+1)-th value (inf when there is none), to detect near-ties."""
    order = torch.sort(-score.detach(), dim=-1, stable=True).indices
    top = order[:, :k]
    vals = torch.gather(score.detach(), 1, order)
    if score.shape[1] > k:
        gap = vals[:, k - 1] - vals[:, k]
        gap = torch.where(torch.isinf(vals[:, k]), torch.full_like(gap, float("inf")), gap)
    else:
        gap = torch.full((score.shape[0],), float("inf"), dtype=score.dtype)
    return top, gap


def mohge_ffn(x, P, p, f, routing):
    N, D = x.shape
    G, n, Kg, K = f["groups"], f["experts_per_group"], f["top_groups"], f["top_experts"]
    E = G * n
    reference = f["router_variant"] == "reference"
    lg = x @ P[p + "group_gate.weight"].T                      # (N, G)
    le = x @ P[p + "expert_gate.weight"].T                     # (N, E)
    gs = torch.sigmoid(lg)
    gtop, ggap = top_k_sorted(gs, Kg)
    kept_g = torch.zeros(N, G, dtype=torch.bool)
    kept_g[torch.arange(N)[:, None], gtop] = True
    es = torch.softmax(le.view(N, G, n), dim=-1) * kept_g[:, :, None]   # ES' (0 for dropped)
    if reference:
        gamma = gs * kept_g / ((gs * kept_g).sum(-1, keepdim=True) + 1e-20)
    else:
        gamma = gs * kept_g
    u = (es * gamma[:, :, None]).reshape(N, E)                  # ES''
    q = u / u.sum(-1, keepdim=True)
    rank = q if reference else u
    kept_e = kept_g.repeat_interleave(n, dim=1)
    etop, egap = top_k_sorted(rank.masked_fill(~kept_e, float("-inf")), K)
    picked = torch.gather(rank, 1, etop)
    w = torch.softmax(picked, dim=-1) if reference else picked / picked.sum(-1, keepdim=True)

    y = torch.zeros_like(x)
    for s in range(f.get("shared_experts", 0)):
        y = y + swiglu(x, P, p + "shared_experts.%d" % s)
    for e in range(E):
        rows, slots = torch.nonzero(etop == e, as_tuple=True)
        if rows.numel():
            out = swiglu(x[rows], P, p + "experts.%d.%d" % (e // n, e % n))
            y = y.index_add(0, rows, out * w[rows, slots][:, None])

    # Auxiliary losses; counts are constants.
    group_count = kept_g.sum(0).to(torch.float64)
    expert_count = torch.zeros(E, dtype=torch.float64)
    expert_count.index_add_(0, etop.reshape(-1), torch.ones(N * K, dtype=torch.float64))
    widths = torch.tensor(f["widths"], dtype=torch.float64)
    if f["group_loss"] == "reference":
        cost = (widths - widths.min() + 1024.0) / 1024.0
        pg = torch.softmax(lg, dim=-1).mean(0)
    else:
        cost = widths / widths.max()
        pg = (gs / gs.sum(-1, keepdim=True)).mean(0)
    fg = G / (Kg * N) * group_count
    aux_g = f["alpha_group"] * (cost * fg * pg).sum()
    if f["expert_loss"] == "reference":
        fe = E / (K * N) * expert_count
        aux_e = f["alpha_expert"] * (fe * q.mean(0)).sum()
    else:
        fe = n / (K * N) * expert_count
        pe = (es / (es.sum(-1, keepdim=True) + 1e-6)).reshape(N, E).mean(0)
        aux_e = f["alpha_expert"] * (fe * pe).sum()
    routing.append((etop, w, min(ggap.min().item(), egap.min().item())))
    return y, aux_g, aux_e


def moe_ffn(x, P, p, f, routing):
    N, D = x.shape
    E, K = f["experts"], f["top_experts"]
    prob = torch.softmax(x @ P[p + "gate.weight"].T, dim=-1)
    top, gap = top_k_sorted(prob, K)
    w = torch.gather(prob, 1, top)
    y = torch.zeros_like(x)
    for s in range(f.get("shared_experts", 0)):
        y = y + swiglu(x, P, p + "shared_experts.%d" % s)
    for e in range(E):
        rows, slots = torch.nonzero(top == e, as_tuple=True)
        if rows.numel():
            y = y.index_add(0, rows, swiglu(x[rows], P, p + "experts.%d" % e) * w[rows, slots][:, None])
    count = torch.zeros(E, dtype=torch.float64)
    count.index_add_(0, top.reshape(-1), torch.ones(N * K, dtype=torch.float64))
    aux = f["alpha_balance"] * (E / (K * N) * count * prob.mean(0)).sum()
    routing.append((top, w, gap.min().item()))
    return y, torch.zeros((), dtype=torch.float64), aux


def forward(P, tokens, spec):
    m = spec["model"]
    f = m["ffn"]
    eps = m.get("norm_eps", 1e-5)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    B, T = inputs.shape
    x = P["model.embed_tokens.weight"][inputs]
    aux_g = torch.zeros((), dtype=torch.float64)
    aux_e = torch.zeros((), dtype=torch.float64)
    routing = []
    for l in range(m["layers"]):
        p = "model.layers.%d." % l
        h = x + attention(rmsnorm(x, P[p + "input_layernorm.weight"], eps), P, p + "self_attn.", m)
        z = rmsnorm(h, P[p + "post_attention_layernorm.weight"], eps).reshape(B * T, -1)
        if f["kind"] == "dense":
            y = swiglu(z, P, p + "mlp")
        elif f["kind"] == "moe":
            y, a_g, a_e = moe_ffn(z, P, p + "mlp.", f, routing)
            aux_g, aux_e = aux_g + a_g, aux_e + a_e
        else:
            y, a_g, a_e = mohge_ffn(z, P, p + "mlp.", f, routing)
            aux_g, aux_e = aux_g + a_g, aux_e + a_e
        x = h + y.view(B, T, -1)
    w_out = P["model.embed_tokens.weight"] if m["tie_embeddings"] else P["lm_head.weight"]
    logits = (rmsnorm(x, P["model.norm.weight"], eps) @ w_out.T).reshape(B * T, -1)
    ce = torch.nn.functional.cross_entropy(logits, targets.reshape(-1))
    return logits, ce, aux_g, aux_e, routing


# ---------------------------------------------------------------------------------------
# Output


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text.encode())
        for b in blobs:
            out.write(b)


def finite_difference_check(P, tokens, spec, grads):
    """Spot-checks autograd against central differences in float64 (a few entries of every
    parameter), so the reference itself is known to be right."""
    def total():
        _, ce, ag, ae, _ = forward(P, tokens, spec)
        return (ce + ag + ae).item()
    # float64 differences with h = 1e-5: rounding ~1e-16·|loss|/h ≈ 1e-10, truncation O(h²).
    h = 1e-5
    worst = 0.0
    with torch.no_grad():
        for name, t in P.items():
            flat = t.view(-1)
            for j in (0, flat.numel() // 2, flat.numel() - 1):
                saved = flat[j].item()
                flat[j] = saved + h
                plus = total()
                flat[j] = saved - h
                minus = total()
                flat[j] = saved
                num = (plus - minus) / (2 * h)
                ana = grads[name].view(-1)[j].item()
                err = abs(num - ana) / (1e-8 + 1e-5 * abs(num))
                if err > 1:
                    print("    FD mismatch %s[%d]: autograd %.10g numeric %.10g" % (name, j, ana, num))
                worst = max(worst, err)
    assert worst <= 1, "autograd disagrees with finite differences (%g of tolerance)" % worst
    return worst


def generate(kind, seed):
    spec = spec_for(kind)
    m = spec["model"]
    for attempt in range(100):
        gen = torch.Generator().manual_seed(seed + attempt)
        P = init_parameters(spec, gen)
        tokens = torch.randint(0, m["vocab_size"], (BATCH, m["seq_len"] + 1), generator=gen)
        logits, ce, aux_g, aux_e, routing = forward(P, tokens, spec)
        min_gap = min([r[2] for r in routing], default=float("inf"))
        if min_gap > 1e-4:  # fp32 vs fp64 cannot flip a top-k choice
            break
        print("  %s: seed %d has a near-tie in routing (gap %.2e); trying the next seed"
              % (kind, seed + attempt, min_gap))
    total = ce + aux_g + aux_e
    names = list(P.keys())
    raw = torch.autograd.grad(total, [P[n] for n in names], allow_unused=True)
    # An expert no token chose has no gradient: zero.
    grads = {n: (g if g is not None else torch.zeros_like(P[n])) for n, g in zip(names, raw)}
    worst = finite_difference_check(P, tokens, spec, grads)

    out = {n: P[n].to(torch.float32) for n in names}
    out["input.tokens"] = tokens.to(torch.int64)
    out["output.logits"] = logits.to(torch.float32)
    out["output.ce_loss"] = ce.reshape(1).to(torch.float32)
    out["output.aux_group"] = aux_g.reshape(1).to(torch.float32)
    out["output.aux_expert"] = aux_e.reshape(1).to(torch.float32)
    out["output.total_loss"] = total.reshape(1).to(torch.float32)
    for l, (idx, w, _) in enumerate(routing):
        out["output.layers.%d.topk_index" % l] = idx.to(torch.int64)
        out["output.layers.%d.topk_weight" % l] = w.to(torch.float32)
    for n in names:
        out["grad." + n] = grads[n].to(torch.float32)
    metadata = {"format": FORMAT, "version": VERSION, "kind": kind, "mohge_spec": json.dumps(spec),
                "torch_version": torch.__version__, "seed": str(seed + attempt)}
    path = os.path.join(HERE, "reference-%s.safetensors" % kind)
    write_safetensors(path, out, metadata)
    print("%s: CE %.6f aux_group %.3e aux_expert %.3e, routing gap %.2e, FD check %.2f of tolerance -> %s (%d bytes)"
          % (kind, ce.item(), aux_g.item(), aux_e.item(), min_gap, worst, os.path.relpath(path),
             os.path.getsize(path)))


def main():
    torch.set_num_threads(1)
    for i, kind in enumerate(["mohge", "mohge-reference", "moe", "dense"]):
        generate(kind, 1000 * (i + 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
