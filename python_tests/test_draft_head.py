"""The JetSpec draft head: published checkpoint format (load / save round trip, key names),
fresh heads for any target, target checks, and the forward against a dense re-statement of the
public causal-head semantics (context K/V from fused tapped features, causal block)."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from decoder_support import tiny_config
from jetspec_ext.draft_head import JetSpecDraftHead, default_target_layer_ids

PUBLISHED_LAYER_KEYS = [
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight"]


def published_keys(n_layers):
    return sorted([f"layers.{i}.{k}" for i in range(n_layers) for k in PUBLISHED_LAYER_KEYS]
                  + ["norm.weight", "fc.weight", "hidden_norm.weight"])


def small_head(L=8, layers=2, hidden=64, vocab=300, block=6, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config(tied=False, vocab=vocab, layers=L, hidden=hidden)
    head = JetSpecDraftHead.for_target(cfg, num_layers=layers, block_size=block, mask_token_id=vocab - 2)
    with torch.no_grad():  # non-trivial norms so that a wrong norm placement shows
        for n, p in head.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return cfg, head


def test_default_tapped_layers():
    assert default_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]  # Qwen3-8B, DESIGN §1
    assert default_target_layer_ids(28, 5) == [1, 7, 13, 19, 25]
    cfg = tiny_config(tied=True, vocab=100, layers=36)
    head = JetSpecDraftHead.for_target(cfg, num_layers=5)
    assert head.target_layer_ids == [1, 9, 17, 25, 33]
    assert head.fc.weight.shape == (cfg.hidden_size, 5 * cfg.hidden_size)


def test_save_load_round_trip(tmp_path):
    cfg, head = small_head()
    head.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert set(raw["dflash_config"]) == {"causal_head", "target_layer_ids", "mask_token_id", "target_hidden_size"}
    assert raw["block_size"] == 6 and raw["num_target_layers"] == 8
    assert raw["dflash_config"]["target_layer_ids"] == head.target_layer_ids
    st = load_file(tmp_path / "model.safetensors")
    assert sorted(st) == published_keys(2)
    again = JetSpecDraftHead.from_pretrained(str(tmp_path))
    for k, v in head.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert again.mask_token_id == head.mask_token_id and again.block_size == 6
    assert again.config.rope_parameters["rope_theta"] == cfg.rope_parameters["rope_theta"]


def test_loads_published_style_checkpoint(tmp_path):
    """A config.json as the public heads ship it (transformers-4 style, rope_theta at the top,
    architectures / auto_map / torch_dtype) and bf16 weights with the published names."""
    H, Hd, nh, nkv, I, V, L, n = 64, 128, 4, 2, 96, 300, 10, 2
    ids = [1, 7]
    raw = {"architectures": ["DFlashDraftModel"], "auto_map": {"AutoModel": "dflash.DFlashDraftModel"},
           "model_type": "qwen3", "hidden_size": H, "num_hidden_layers": n, "num_attention_heads": nh,
           "num_key_value_heads": nkv, "head_dim": Hd, "intermediate_size": I, "rms_norm_eps": 1e-6,
           "rope_theta": 1000000, "vocab_size": V, "max_position_embeddings": 40960,
           "hidden_act": "silu", "attention_bias": False, "torch_dtype": "bfloat16",
           "tie_word_embeddings": False, "block_size": 16, "num_target_layers": L,
           "dflash_config": {"causal_head": True, "target_layer_ids": ids, "mask_token_id": 299,
                             "target_hidden_size": H}}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    shapes = {"self_attn.q_proj.weight": (nh * Hd, H), "self_attn.k_proj.weight": (nkv * Hd, H),
              "self_attn.v_proj.weight": (nkv * Hd, H), "self_attn.o_proj.weight": (H, nh * Hd),
              "self_attn.q_norm.weight": (Hd,), "self_attn.k_norm.weight": (Hd,),
              "mlp.gate_proj.weight": (I, H), "mlp.up_proj.weight": (I, H), "mlp.down_proj.weight": (H, I),
              "input_layernorm.weight": (H,), "post_attention_layernorm.weight": (H,)}
    g = torch.Generator().manual_seed(0)
    st = {f"layers.{i}.{k}": torch.randn(s, generator=g).bfloat16() for i in range(n) for k, s in shapes.items()}
    st.update({"norm.weight": torch.randn(H, generator=g).bfloat16(),
               "fc.weight": torch.randn(H, len(ids) * H, generator=g).bfloat16(),
               "hidden_norm.weight": torch.randn(H, generator=g).bfloat16()})
    save_file(st, str(tmp_path / "model.safetensors"))
    head = JetSpecDraftHead.from_pretrained(str(tmp_path))
    assert head.target_layer_ids == ids and head.mask_token_id == 299 and head.block_size == 16
    assert head.config.rope_parameters["rope_theta"] == 1000000
    assert head.fc.weight.dtype == torch.bfloat16
    for k, v in st.items():
        assert torch.equal(head.state_dict()[k], v), k
    head.check_target(tiny_config(tied=False, vocab=V, layers=L, hidden=H))
    assert head.causal
    # a bidirectional (DFlash-style) head: the same files with causal_head false load, as such
    raw["dflash_config"]["causal_head"] = False
    (tmp_path / "config.json").write_text(json.dumps(raw))
    bidir = JetSpecDraftHead.from_pretrained(str(tmp_path))
    assert not bidir.causal
    assert all(torch.equal(bidir.state_dict()[k], v) for k, v in st.items())
    # errors: a missing weight (named), mismatched target
    del st["fc.weight"]
    save_file(st, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing.*fc\.weight"):
        JetSpecDraftHead.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="out of range"):
        head.check_target(tiny_config(tied=False, vocab=V, layers=6, hidden=H))
    with pytest.raises(ValueError, match="vocab"):
        head.check_target(tiny_config(tied=False, vocab=V + 1, layers=L, hidden=H))
    with pytest.raises(FileNotFoundError):
        JetSpecDraftHead.from_pretrained(str(tmp_path / "none"))


def _rope(x, pos, theta, dim):
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = pos.double()[:, None] * inv[None]
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos().float(), emb.sin().float()
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def dense_reference(head, tapped, block_embeds):
    """Independent statement of the public causal head forward (B = 1): keys/values over
    [fused context ; block], block queries at the last positions, key j visible to block query i
    iff j <= T + i."""
    cfg = head.config
    T, N = tapped.shape[1], block_embeds.shape[1]
    eps = cfg.rms_norm_eps

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    fused = rms(tapped @ head.fc.weight.T, head.hidden_norm.weight)[0]       # (T, H)
    x = block_embeds[0]
    pos = torch.arange(T + N)
    allow = torch.arange(T + N)[None, :] <= (T + torch.arange(N))[:, None]
    for lyr in head.layers:
        a = lyr.self_attn
        h = rms(x, lyr.input_layernorm.weight)
        kv_in = torch.cat([fused, h], 0)
        q = rms((h @ a.q_proj.weight.T).view(N, a.num_heads, a.head_dim), a.q_norm.weight)
        k = rms((kv_in @ a.k_proj.weight.T).view(T + N, a.num_kv_heads, a.head_dim), a.k_norm.weight)
        v = (kv_in @ a.v_proj.weight.T).view(T + N, a.num_kv_heads, a.head_dim)
        theta = cfg.rope_parameters["rope_theta"]
        q = _rope(q.transpose(0, 1), pos[T:], theta, a.head_dim)
        k = _rope(k.transpose(0, 1), pos, theta, a.head_dim).repeat_interleave(a.num_heads // a.num_kv_heads, 0)
        v = v.transpose(0, 1).repeat_interleave(a.num_heads // a.num_kv_heads, 0)
        s = (q @ k.transpose(1, 2)) * a.head_dim ** -0.5
        o = torch.softmax(s.masked_fill(~allow, float("-inf")), -1) @ v       # (heads, N, Dh)
        x = x + o.transpose(0, 1).reshape(N, -1) @ a.o_proj.weight.T
        m = lyr.mlp
        h = rms(x, lyr.post_attention_layernorm.weight)
        x = x + (torch.nn.functional.silu(h @ m.gate_proj.weight.T) * (h @ m.up_proj.weight.T)) @ m.down_proj.weight.T
    return rms(x, head.norm.weight)


@torch.no_grad()
def test_forward_matches_dense_public_semantics():
    cfg, head = small_head()
    T, D = 11, 5
    F = len(head.target_layer_ids) * cfg.hidden_size
    tapped = torch.randn(1, T, F)
    block = torch.randn(1, D + 1, cfg.hidden_size)
    want = dense_reference(head, tapped, block)
    cache = head.new_context_cache(1, T + D + 8)
    lens = torch.zeros(1, dtype=torch.int32)
    head.extend_context(cache, lens, tapped[:, :7])         # context grown incrementally
    lens += 7
    head.extend_context(cache, lens, tapped[:, 7:])
    lens += T - 7
    got = head.forward_block(cache, lens, block)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # causal block: a shorter block gives the same outputs for its positions
    short = head.forward_block(cache, lens, block[:, :3])[0]
    torch.testing.assert_close(short, want[:3], rtol=1e-4, atol=1e-4)
    # the block's own k/v writes beyond the context do not disturb the next call
    again = head.forward_block(cache, lens, block)[0]
    torch.testing.assert_close(again, got, rtol=0, atol=0)
