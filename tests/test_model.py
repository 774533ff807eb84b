import pytest
import torch

from model import CPUDropout, apply_lora, build_model, count_parameters, cpu_dropout
from metrics import macro_f1
from optim import build_optimizer, build_param_groups


@pytest.fixture
def net(tiny_model):
    torch.manual_seed(0)
    return build_model(tiny_model, n_classes=5, dropout=0.1, projection=True)


def test_shapes(net):
    ids = torch.randint(1000, 2000, (3, 7))
    mask = torch.ones_like(ids)
    assert net(ids, mask)["logits"].shape == (3, 5)
    z = net(ids, mask, project=True)["projection"]
    assert z.shape == (3, 32)
    assert torch.allclose(z.norm(dim=-1), torch.ones(3))
    assert [m.out_features for m in net.head if isinstance(m, torch.nn.Linear)] == [256, 5]
    assert net.encoder.pooler is None


def test_padding_does_not_change_logits(net):
    net.eval()
    ids = torch.randint(1000, 2000, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], 1).long()
    assert torch.allclose(net(ids, torch.ones_like(ids))["logits"], net(padded, mask)["logits"], atol=1e-5)


def test_eager_attention_matches_default(tiny_model):
    """The CPU fast path swaps the attention kernel; outputs and gradients must not change."""
    ids = torch.randint(1000, 2000, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    outs = []
    for attention in ("eager", "sdpa"):
        torch.manual_seed(0)
        m = build_model(tiny_model, n_classes=5, dropout=0.0, attention=attention)
        assert m.encoder.config._attn_implementation == attention
        logits = m(ids, mask)["logits"]
        logits.sum().backward()
        outs.append((logits, m.encoder.embeddings.word_embeddings.weight.grad))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5)


def test_half_precision_weights_load_as_fp32(tiny_model, tmp_path):
    """Hub models are often stored in fp16; training must still update fp32 weights."""
    from transformers import AutoModel

    AutoModel.from_pretrained(tiny_model).half().save_pretrained(tmp_path)
    m = build_model(str(tmp_path), n_classes=5, dropout=0.1)
    assert {p.dtype for p in m.parameters()} == {torch.float32}


def test_param_groups_llrd(net):
    lr, decay = 1e-3, 0.5
    groups = build_param_groups(net.named_parameters(), lr, 0.01, decay, n_layers=2)
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in net.named_parameters())  # each parameter exactly once
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["head.0.weight"]["lr"] == lr
    assert by_name["projection.weight"]["lr"] == lr
    assert by_name["encoder.encoder.layer.1.attention.self.query.weight"]["lr"] == lr
    assert by_name["encoder.encoder.layer.0.attention.self.query.weight"]["lr"] == lr * decay
    assert by_name["encoder.embeddings.word_embeddings.weight"]["lr"] == lr * decay ** 2
    assert by_name["head.0.bias"]["weight_decay"] == 0
    assert by_name["encoder.embeddings.LayerNorm.weight"]["weight_decay"] == 0
    assert by_name["head.0.weight"]["weight_decay"] == 0.01


def test_a_crf_trains_its_scores_at_a_higher_lr_without_decay(tiny_model):
    from model import CRF_LR_SCALE, LR_SCALES

    net = build_model(tiny_model, n_classes=5, dropout=0.1, slot_classes=4, crf=True)
    out = net(torch.randint(1000, 2000, (2, 6)), torch.ones(2, 6, dtype=torch.long))
    assert out["slot_logits"].shape == (2, 6, 4) and out["slot_crf"].shape == (6, 4)
    groups = build_param_groups(net.named_parameters(), 1e-3, 0.01, 0.5, n_layers=2, scales=LR_SCALES)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["slot_crf.scores"]["lr"] == 1e-3 * CRF_LR_SCALE and by_name["slot_crf.scores"]["weight_decay"] == 0
    assert by_name["slot_head.weight"]["lr"] == 1e-3 and by_name["slot_crf.scores"]["names"] == ["slot_crf.scores"]


def test_param_groups_skip_frozen(net):
    for p in net.encoder.parameters():
        p.requires_grad_(False)
    groups = build_param_groups(net.named_parameters(), 1e-3, 0.0, 0.8, n_layers=2)
    assert {n.split(".")[0] for g in groups for n in g["names"]} == {"head", "projection"}


@pytest.mark.parametrize("fused", [True, False])
def test_warmup_then_linear_decay(net, fused):
    groups = build_param_groups(net.named_parameters(), 1.0, 0.0, 0.5, n_layers=2)
    opt, sched = build_optimizer(groups, 1e-8, fused, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.0, 0.5, 1.0, 0.875])
    assert lrs[-1] == pytest.approx(0.125)
    assert sched.get_last_lr()[-1] == pytest.approx(0.0)
    assert len({g["lr"] for g in opt.param_groups}) == 1  # all groups at the same point of the schedule (at 0)


def test_lora_trains_adapters_and_head_only(tiny_model):
    net = build_model(tiny_model, n_classes=5, dropout=0.1)
    total_before, _ = count_parameters(net)
    model = apply_lora(net, rank=4, alpha=8, targets="query-value")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".head." in n for n in trainable)
    assert any(".head.modules_to_save." in n for n in trainable)
    assert not any("key" in n for n in trainable)
    all_linear = apply_lora(build_model(tiny_model, 5, 0.1), 4, 8, "all-linear")
    lora_modules = {n.split(".lora_")[0] for n, p in all_linear.named_parameters() if "lora_" in n}
    assert any(n.endswith("attention.self.key") for n in lora_modules)
    assert any(n.endswith("intermediate.dense") for n in lora_modules)
    assert not any(".head." in n for n in lora_modules)


def test_macro_f1():
    assert macro_f1([0, 1, 1, 2], [0, 1, 2, 2], 4) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert macro_f1([0, 0], [0, 0], 3) == 1.0


def test_bundled_encoder_resolves_to_a_json_safe_folder():
    import json
    import os

    from model import resolve_model

    path = resolve_model(None)
    assert isinstance(path, str) and os.path.isfile(os.path.join(path, "config.json"))
    assert json.loads(json.dumps({"encoder": path}))["encoder"] == path
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"


def test_keep_freed_memory_on_glibc():
    import platform

    from utils import keep_freed_memory

    assert keep_freed_memory() == (platform.libc_ver()[0] == "glibc")


def test_cpu_dropout_keeps_1_minus_p_scaled_and_its_gradient_is_the_mask():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = CPUDropout(0.3)(x)
    kept = y > 0
    # 1e6 Bernoulli(0.7) draws: the kept share is within 5 standard deviations (0.00046) of 0.7
    assert abs(kept.float().mean().item() - 0.7) < 0.0023
    assert torch.allclose(y[kept], torch.tensor(65536 / (65536 - round(0.3 * 65536))))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * mask)/dx is the scaled mask
    rows = kept.float().mean(1)  # no pattern across the flat index: every row keeps about 70% too
    assert rows.min() > 0.62 and rows.max() < 0.78


def test_cpu_dropout_follows_torch_seed_and_is_identity_in_eval_and_bf16_stays_bf16():
    d, x = CPUDropout(0.1), torch.randn(4, 7, 16)
    torch.manual_seed(1)
    a = d(x)
    torch.manual_seed(1)
    assert torch.equal(d(x), a) and not torch.equal(d(x), a)  # same seed, same mask; the next call draws anew
    assert d(x.bfloat16()).dtype == torch.bfloat16
    assert torch.equal(d.eval()(x), x) and torch.equal(CPUDropout(0.0)(x), x)


def test_cpu_dropout_replaces_every_dropout_module_and_nothing_else(tiny_model):
    net = build_model(tiny_model, 3, 0.1, slot_classes=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    n = sum(type(m) is torch.nn.Dropout for m in net.modules())
    cpu_dropout(net)
    assert n > 0 and sum(type(m) is CPUDropout for m in net.modules()) == n
    assert not any(type(m) is torch.nn.Dropout for m in net.modules())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
