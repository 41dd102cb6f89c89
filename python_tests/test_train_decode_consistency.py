"""The training loss sees exactly what the decoder drafts (issue 6 diagnosis).

The head's own forward is covered by test_train.py (dense many-block forward = forward_block).
This checks the whole training path end to end against a real greedy decode: the target's tapped
features (HF ``hidden_states`` in training, ``Target.forward`` over verified trees in decoding),
which token is the anchor, the block's RoPE positions, the context length, the mask token and the
teacher position. ``loss_on_batch`` with the decode rounds' prefix lengths as anchors must equal
the KL computed from the draft logits the decoder actually produced in those rounds against the
target's logits at anchor + i - 1.
"""
import pytest
import torch
import torch.nn.functional as F

from decoder_support import tiny_target
from jetspec_ext.decoder import HeadDrafter, generate
from jetspec_ext.draft_head import JetSpecDraftHead
from jetspec_ext.target import Target
from jetspec_ext.train import loss_on_batch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("causal", [True, False])
@torch.no_grad()
def test_loss_on_batch_equals_kl_of_decoder_drafts(causal):
    model = tiny_target(tied=True, vocab=256, layers=4, hidden=64)
    torch.manual_seed(1)
    head = JetSpecDraftHead.for_target(model.config, num_layers=2, block_size=5, mask_token_id=1, causal=causal)
    with torch.no_grad():  # a less uniform head: draft logits differ clearly per slot
        for p in head.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    head.eval()
    # the training-path teacher, from the plain HF forward, before a Target wraps the model
    prompt = [5, 17, 99, 3, 42, 8, 77]
    target = Target(model, head.target_layer_ids)
    drafter = HeadDrafter(head, target)
    D = drafter.depth
    rec = []
    orig = drafter.draft

    def recording(ctx, ctx_lens, anchor):
        out = orig(ctx, ctx_lens, anchor)
        rec.append((int(ctx_lens[0]), int(anchor[0]), out[0].clone()))
        return out

    drafter.draft = recording
    r = generate(target, drafter, prompt, budget=8, width=2, max_new_tokens=24)
    seq = prompt + r.tokens[0]
    T = len(seq)
    rounds = [x for x in rec if x[0] <= T - 2]
    assert len(rounds) >= 3
    for pfx, anc, _ in rounds:
        assert seq[pfx] == anc  # the anchor is the committed token at position prefix_len

    ids = torch.tensor([seq])
    anchors = torch.tensor([[pfx for pfx, _, _ in rounds]])
    batch = (ids, torch.ones_like(ids), torch.tensor([T]), anchors, torch.ones_like(anchors, dtype=torch.bool))
    loss, stats = loss_on_batch(model, head, batch)

    t_logits = model(input_ids=ids).logits[0].float()
    kls = []
    for pfx, _, draft_logits in rounds:
        for i in range(1, D + 1):
            if pfx + i >= T:
                break
            teacher = F.log_softmax(t_logits[pfx + i - 1], -1)
            student = F.log_softmax(draft_logits[i - 1].float(), -1)
            kls.append((teacher.exp() * (teacher - student)).sum())
    want = torch.stack(kls).mean()
    assert stats["slots"] == len(kls)
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-5)
