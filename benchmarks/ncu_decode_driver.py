import os, torch, jetspec_ext
os.environ["JETSPEC_TREE_ATTN_IMPL"] = "decode"
q = torch.randn(1, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 8, 1100, 128, device="cuda", dtype=torch.bfloat16); v = torch.randn_like(k)
pl = torch.tensor([1024], dtype=torch.int32, device="cuda"); mask = torch.full((1, 1, 1), -1, dtype=torch.int32, device="cuda")
for _ in range(5): jetspec_ext.tree_attention(q, k, v, pl, mask)
torch.cuda.synchronize()
