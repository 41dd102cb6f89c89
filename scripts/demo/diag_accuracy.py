#!/usr/bin/env python
"""Issue 6 diagnosis: how well does a draft head predict the target's greedy tokens, per mask slot,
and how predictable is the target itself?

For each prompt set (``--set NAME=PROMPTS.jsonl[@START:STOP]``: the prompts at indices
START..STOP-1 of the list after sorting it by token length, longest first, the order in which
``jetspec train``'s regeneration answers prompts; without ``@`` the first ``--num``):

1. the target's greedy answers (``jetspec_ext.train.regenerate``, cached in ``--cache-dir``), the
   same generation settings as the demo head's training data (max 256 new tokens, stop ids),
2. the head on EVERY anchor of every answer through the training code path (``loss_on_batch``'s
   maths: ``_target_features`` + ``dense_block_forward``), and per mask slot i = 1..D:
   top-1 / top-7 accuracy against the greedy token at anchor + i, the chain acceptance
   P(slots 1..i all top-1) and the width-7 tree ceiling P(slots 1..i all in the top 7), the
   forward KL to the target (temperature 1),
3. the target's own predictability on the same answers: entropy and top-1 probability per token,
   a prompt-lookup (n-gram copy) predictor over prompt + answer so far, and a bigram / trigram
   "most frequent continuation" table built from ``--ngram-corpus`` source files (the target's
   training domain), each as next-token accuracy and (n-gram copy) as a simulated chain tau.

    python scripts/demo/diag_accuracy.py --set mbpp=build/diag/eval_prompts.jsonl --num 30 \\
        --out build/diag/acc.json

CPU, one thread, fp32. Writes ``--out`` (JSON) and prints a table per set.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import torch
import torch.nn.functional as F


def slot_metrics(model, head, seq, P, max_len=384):
    """Per-anchor, per-slot arrays for one sequence (prompt P tokens + answer)."""
    from jetspec_ext.train import _target_features, block_attention_mask, dense_block_forward

    seq = seq[:max_len]
    L = len(seq)
    N, D = head.block_size, head.block_size - 1
    ids = torch.tensor([seq])
    anchors = torch.arange(P, L - 1).unsqueeze(0)  # every anchor with a following token
    K = anchors.shape[1]
    if K == 0:
        return None
    with torch.no_grad():
        tapped, last = _target_features(model, ids, torch.ones_like(ids), head.target_layer_ids)
        t_logits = model.lm_head(last)[0].float()                  # (L, V)
        blk = torch.full((1, K, N), head.mask_token_id, dtype=torch.long)
        blk[:, :, 0] = ids[0, anchors[0]]
        emb = model.model.embed_tokens(blk.view(1, K * N))
        bpos = (anchors.unsqueeze(-1) + torch.arange(N)).view(1, K * N)
        mask = block_attention_mask(anchors, torch.ones_like(anchors, dtype=torch.bool), L, N, head.causal)
        h = dense_block_forward(head, tapped, emb, bpos, mask).view(K, N, -1)[:, 1:]
        s_logp = F.log_softmax(model.lm_head(h).float(), dim=-1)     # (K, D, V)
        tpos = anchors[0].unsqueeze(1) + torch.arange(D)               # teacher position a+i-1
        ok = (tpos + 1) < L                                             # token a+i exists
        tpos_c = tpos.clamp(max=L - 1)
        want = ids[0, (tpos_c + 1).clamp(max=L - 1)]                    # greedy token a+i
        teach = F.log_softmax(t_logits[tpos_c], dim=-1)                 # (K, D, V)
        kl = (teach.exp() * (teach - s_logp)).sum(-1)
        top7 = s_logp.topk(7, dim=-1).indices
        top1 = top7[..., 0] == want
        in7 = (top7 == want.unsqueeze(-1)).any(-1)
        t_ent = -(teach.exp() * teach).sum(-1)
        t_p1 = teach.max(-1).values.exp()
    return dict(ok=ok, top1=top1, in7=in7, kl=kl, t_ent=t_ent, t_p1=t_p1)


def lookup_predict(ctx, nmax=3):
    """Prompt-lookup: the token after the most recent earlier occurrence of the longest suffix
    (n = nmax..1) of ctx; None when no suffix recurs."""
    L = len(ctx)
    for n in range(min(nmax, L - 1), 0, -1):
        suf = ctx[L - n:]
        for s in range(L - n - 1, -1, -1):
            if ctx[s: s + n] == suf:
                return s + n  # index of the predicted token in ctx
    return None


def pld_chain_tau(seq, P, depth=15, nmax=3):
    """Simulated prompt-lookup decoding (greedy chain of up to ``depth`` copied tokens) on the
    answer: tokens produced per round."""
    pos, rounds, produced = P, 0, 0   # pos: index of the anchor (the last committed token + 1)
    L = len(seq)
    while pos < L:
        # committed: seq[:pos]; anchor seq[pos] is known (emitted by the target last round)
        ctx = seq[: pos + 1]
        j = lookup_predict(ctx, nmax)
        acc = 0
        if j is not None:
            draft = ctx[j: j + depth]
            # a copy may run into the anchor itself: extend by reading from ctx as it grows
            while len(draft) < depth and j + len(draft) < len(ctx):
                draft.append(ctx[j + len(draft)])
            for k, t in enumerate(draft):
                if pos + 1 + k < L and seq[pos + 1 + k] == t:
                    acc += 1
                else:
                    break
        n = min(acc + 1, L - pos)
        produced += n
        rounds += 1
        pos += n
    return produced / max(rounds, 1)


def ngram_table(files, tok, max_bytes):
    """Bigram and trigram 'most frequent next token' tables from source files."""
    c2 = collections.defaultdict(collections.Counter)
    c3 = collections.defaultdict(collections.Counter)
    read = 0
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                s = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        read += len(s)
        ids = tok(s, add_special_tokens=False).input_ids + [0]
        for a, b in zip(ids, ids[1:]):
            c2[a][b] += 1
        for a, b, c in zip(ids, ids[1:], ids[2:]):
            c3[(a, b)][c] += 1
        if read >= max_bytes:
            break
    return ({k: v.most_common(1)[0][0] for k, v in c2.items()},
            {k: v.most_common(1)[0][0] for k, v in c3.items()}, read)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", required=True, help="NAME=PROMPTS.jsonl[@START:STOP]")
    ap.add_argument("--num", type=int, default=30)
    ap.add_argument("--head", default=None)
    ap.add_argument("--gen-max-new-tokens", type=int, default=256)
    ap.add_argument("--max-len", type=int, default=384)
    ap.add_argument("--cache-dir", default="build/diag")
    ap.add_argument("--ngram-corpus", default=None, help="directory of .py files for the n-gram tables")
    ap.add_argument("--ngram-bytes", type=int, default=20_000_000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from jetspec_ext.demo import demo_head_dir, load_demo_target
    from jetspec_ext.draft_head import JetSpecDraftHead
    from jetspec_ext.train import encode_prompt, read_prompts, regenerate, stop_ids_for

    model, tok = load_demo_target(device="cpu", dtype=torch.float32)
    model.requires_grad_(False)
    head = JetSpecDraftHead.from_pretrained(a.head or demo_head_dir(), dtype=torch.float32).eval()
    D = head.block_size - 1
    stops = stop_ids_for(tok, model)
    big = tri = None
    if a.ngram_corpus:
        t0 = time.time()
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(a.ngram_corpus) for f in fs if f.endswith(".py"))
        big, tri, nb = ngram_table(files, tok, a.ngram_bytes)
        print(f"n-gram tables from {nb / 1e6:.1f} MB of {a.ngram_corpus} in {time.time() - t0:.0f} s", flush=True)
    results = {"head": a.head or demo_head_dir(), "D": D, "sets": {}}
    for spec in a.set:
        name, rest = spec.split("=", 1)
        path, rng = (rest.split("@", 1) + [None])[:2]
        texts = read_prompts(path)
        pids = [encode_prompt(tok, t, "off")[-(a.max_len // 2):] for t in texts]
        if rng:
            lo, hi = (int(x) for x in rng.split(":"))
            order = sorted(range(len(pids)), key=lambda i: -len(pids[i]))  # stable, as regenerate
            pool = order[lo:hi]
            step = max(1, len(pool) // a.num)
            chosen = pool[::step][: a.num]
        else:
            chosen = list(range(min(a.num, len(pids))))
        t0 = time.time()
        samples = regenerate(model, [pids[i] for i in chosen], os.path.join(a.cache_dir, f"regen_{name}.jsonl"),
                             max_new_tokens=a.gen_max_new_tokens, batch_size=32, eos_token_id=stops or None,
                             pad_token_id=tok.pad_token_id or 0)
        t_gen = time.time() - t0
        agg = collections.defaultdict(lambda: torch.zeros(D, dtype=torch.float64))
        cnt = torch.zeros(D, dtype=torch.float64)
        chain1 = torch.zeros(D, dtype=torch.float64)
        chain7 = torch.zeros(D, dtype=torch.float64)
        n_anchor = 0
        pred = collections.Counter()
        ent_sum, p1_sum, ntok = 0.0, 0.0, 0
        pld_prod = []
        resp_lens, loops = [], 0
        t0 = time.time()
        for s in samples:
            seq = list(s.prompt_ids) + list(s.response_ids)
            P = len(s.prompt_ids)
            resp_lens.append(len(s.response_ids))
            m = slot_metrics(model, head, seq, P, a.max_len)
            if m is None:
                continue
            ok = m["ok"].double()
            cnt += ok.sum(0)
            for k in ("top1", "in7", "kl"):
                agg[k] += (m[k].double() * ok).sum(0)
            # chain / tree ceilings over anchors whose whole block exists
            full = m["ok"].all(1)
            n_anchor += int(full.sum())
            chain1 += torch.cumprod(m["top1"][full].double(), dim=1).sum(0)
            chain7 += torch.cumprod(m["in7"][full].double(), dim=1).sum(0)
            # target predictability: slot-1 entries cover every answer position a+1-1 = a
            ent_sum += float((m["t_ent"][:, 0] * ok[:, 0]).sum())
            p1_sum += float((m["t_p1"][:, 0] * ok[:, 0]).sum())
            seqc = seq[: a.max_len]
            seen4 = {tuple(seqc[s_: s_ + 4]) for s_ in range(0, P - 3)}
            for j in range(P + 1, len(seqc)):   # token j predicted from seq[:j] (j > P: the
                ntok += 1                         # anchor P is the target's, not predicted here)
                tgt = seqc[j]
                lp = lookup_predict(seqc[:j])
                pred["lookup_hit"] += lp is not None
                pred["lookup_ok"] += lp is not None and seqc[lp] == tgt
                if big is not None:
                    pred["bigram_ok"] += big.get(seqc[j - 1]) == tgt
                    pred["trigram_ok"] += tri.get((seqc[j - 2], seqc[j - 1]), big.get(seqc[j - 1])) == tgt
                # a 4-gram ending at j seen before in the sequence: the answer repeats itself
                g4 = tuple(seqc[j - 3: j + 1])
                pred["repeat4"] += g4 in seen4
                seen4.add(g4)
            pld_prod.append(pld_chain_tau(seqc, P, depth=D))
            if s.response_ids and s.response_ids[-1] not in stops:
                loops += 1
        c = cnt.clamp(min=1)
        r = {
            "prompts": len(samples), "gen_s": round(t_gen, 1), "eval_s": round(time.time() - t0, 1),
            "answer_tokens_mean": sum(resp_lens) / max(len(resp_lens), 1),
            "answers_without_stop_token": loops,
            "slots": int(cnt[0]), "anchors_full_block": n_anchor,
            "top1": (agg["top1"] / c).tolist(), "top7": (agg["in7"] / c).tolist(), "kl": (agg["kl"] / c).tolist(),
            "chain_top1_prefix": (chain1 / max(n_anchor, 1)).tolist(),
            "tree7_prefix": (chain7 / max(n_anchor, 1)).tolist(),
            "chain_tau_ceiling": 1 + float((chain1 / max(n_anchor, 1)).sum()),
            "tree7_tau_ceiling": 1 + float((chain7 / max(n_anchor, 1)).sum()),
            "target_entropy_nats": ent_sum / max(float(cnt[0]), 1),
            "target_top1_prob": p1_sum / max(float(cnt[0]), 1),
            "next_token_acc": {k: v / max(ntok, 1) for k, v in pred.items()},
            "pld_chain_tau": sum(pld_prod) / max(len(pld_prod), 1),
        }
        results["sets"][name] = r
        print(f"== {name}: {r['prompts']} prompts, answers {r['answer_tokens_mean']:.0f} tokens, "
              f"{r['answers_without_stop_token']} hit the length cap, gen {t_gen:.0f} s, eval {r['eval_s']:.0f} s")
        print("slot      " + " ".join(f"{i:5d}" for i in range(1, D + 1)))
        for k in ("top1", "top7", "chain_top1_prefix", "tree7_prefix", "kl"):
            print(f"{k[:9]:9s} " + " ".join(f"{x:5.2f}" for x in r[k]))
        print(f"chain tau ceiling {r['chain_tau_ceiling']:.2f}, width-7 tree tau ceiling (any budget) "
              f"{r['tree7_tau_ceiling']:.2f}; target entropy {r['target_entropy_nats']:.2f} nats, top-1 p "
              f"{r['target_top1_prob']:.2f}; next-token acc {json.dumps({k: round(v, 3) for k, v in r['next_token_acc'].items()})}; "
              f"prompt-lookup chain tau {r['pld_chain_tau']:.2f}", flush=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
