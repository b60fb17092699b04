import pytest
import torch
from torchvision.models import densenet121

from model import ModelConfig, build_model, load_imagenet_backbone
from model.layers import CBAM, MixStyle


def test_mixstyle_is_exact_identity_in_eval():
    m = MixStyle(p=1.0, alpha=0.1).eval()
    x = torch.randn(8, 16, 5, 5)
    assert m(x) is x


def test_mixstyle_train_mixes_statistics_by_hand():
    torch.manual_seed(0)
    m = MixStyle(p=1.0, alpha=0.1).train()
    x = torch.randn(4, 3, 6, 6) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1) + 5
    perm = torch.tensor([1, 0, 3, 2])
    lam = torch.tensor([0.3, 0.9, 0.5, 1.0])
    y = m.mix(x, perm, lam)
    mu = x.mean(dim=(2, 3), keepdim=True)
    sig = (x.var(dim=(2, 3), keepdim=True) + m.eps).sqrt()
    lam4 = lam.view(4, 1, 1, 1)
    mu_mix, sig_mix = lam4 * mu + (1 - lam4) * mu[perm], lam4 * sig + (1 - lam4) * sig[perm]
    torch.testing.assert_close(y, (x - mu) / sig * sig_mix + mu_mix)
    # The output carries the mixed statistics, and lambda = 1 keeps an instance's own style.
    torch.testing.assert_close(y.mean(dim=(2, 3), keepdim=True), mu_mix, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[3], x[3], atol=1e-5, rtol=1e-5)
    # Labels are untouched by construction: the content (normalised map) is preserved.
    torch.testing.assert_close((y - mu_mix) / sig_mix, (x - mu) / sig, atol=1e-4, rtol=1e-4)


def test_mixstyle_probability_zero_and_single_instance_are_identity():
    x = torch.randn(4, 3, 4, 4)
    assert MixStyle(p=0.0).train()(x) is x
    one = torch.randn(1, 3, 4, 4)
    assert MixStyle(p=1.0).train()(one) is one


def test_mixstyle_gradient_does_not_flow_through_statistics():
    """With mu and sigma detached, MixStyle is an affine map of x per (instance, channel):
    d MixStyle(x) / dx = sigma_mix / sigma(x), elementwise, and nothing else. Were the statistics not
    detached, the gradient would also carry the terms through mu(x), sigma(x) and the partner's
    statistics, and differ from this."""
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 4, 4) * torch.rand(4, 3, 1, 1) * 3 + torch.randn(4, 3, 1, 1)).requires_grad_()
    perm, lam = torch.tensor([1, 0, 3, 2]), torch.tensor([0.2, 0.7, 0.4, 0.9])
    m = MixStyle(p=1.0).train()
    weights = torch.randn(4, 3, 4, 4)
    (m.mix(x, perm, lam) * weights).sum().backward()
    with torch.no_grad():
        sig = (x.var(dim=(2, 3), keepdim=True) + m.eps).sqrt()
        lam4 = lam.view(4, 1, 1, 1)
        sig_mix = lam4 * sig + (1 - lam4) * sig[perm]
        expected = weights * sig_mix / sig
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [7, 4])
def test_cbam_shapes_and_range(size):
    cbam = CBAM(64, reduction=16).eval()
    x = torch.rand(2, 64, size, size)
    y, attention = cbam(x)
    assert y.shape == x.shape
    assert attention.shape == (2, 1, size, size)
    assert ((attention > 0) & (attention < 1)).all()


@pytest.mark.parametrize("input_size", [64, 128, 224])
@pytest.mark.parametrize("mixstyle", [True, False])
def test_network_variants_shapes(input_size, mixstyle):
    model = build_model(ModelConfig(input_size=input_size, mixstyle=mixstyle)).eval()
    n_mix = sum(isinstance(m, MixStyle) for m in model.modules())
    assert n_mix == (2 if mixstyle else 0)
    with torch.no_grad():
        logit, descriptor, attention = model(torch.randn(2, 3, input_size, input_size), return_features=True)
    assert logit.shape == (2,) and descriptor.shape == (2, 1024)
    assert attention.shape == (2, 1, input_size // 32, input_size // 32)


def test_mixstyle_never_after_last_stage():
    with pytest.raises(ValueError, match="not allowed"):
        build_model(ModelConfig(mixstyle_after=("denseblock4",)))


def test_config_round_trip():
    cfg = ModelConfig(input_size=224, mixstyle_p=0.3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"bogus": 1})


def test_imagenet_backbone_loads_from_local_legacy_checkpoint(tmp_path):
    """A torchvision-format checkpoint (legacy 'norm.1' keys) loads into the backbone; no download."""
    reference = densenet121(weights=None)
    legacy = {}
    for key, value in reference.state_dict().items():
        if key.endswith("num_batches_tracked"):  # absent from torchvision's published file
            continue
        legacy_key = key
        for name in ("norm1", "norm2", "relu1", "relu2", "conv1", "conv2"):
            legacy_key = legacy_key.replace(f".{name}.", f".{name[:-1]}.{name[-1]}.")
        legacy[legacy_key] = value
    assert any(".norm.1." in k for k in legacy)
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(legacy, path)
    model = build_model()
    left = load_imagenet_backbone(model, path)
    assert all(not k.startswith("features.") for k in left)
    torch.testing.assert_close(model.features.conv0.weight, reference.features.conv0.weight)
    torch.testing.assert_close(model.features.denseblock3.denselayer5.norm2.running_var,
                               reference.features.denseblock3.denselayer5.norm2.running_var)
    with pytest.raises(FileNotFoundError):
        load_imagenet_backbone(model, tmp_path / "missing.pth")


# --------------------------------------------------------------------------- stack_norm (experiments §33)

def small_bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 3), torch.nn.BatchNorm2d(2))
    net.train()
    for _ in range(20):  # running statistics of a "training domain"
        net(torch.randn(8, 3, 10, 10))
    return net.eval()


def test_mixed_statistics_known_answer():
    from model.layers import mixed_statistics

    mu_s, var_s, mu_t, var_t = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0]), torch.tensor([2.0, 1.0]), \
        torch.tensor([3.0, 2.0])
    # n = 16 pages, prior 16: w = 1/2; pooled variance adds w(1-w)(mu_t - mu_s)^2.
    mean, var = mixed_statistics(mu_s, var_s, mu_t, var_t, 16, 16)
    torch.testing.assert_close(mean, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(var, torch.tensor([0.5 * 1 + 0.5 * 3 + 0.25 * 4, 0.5 * 4 + 0.5 * 2]))
    # n = 4, prior 12: w = 1/4.
    mean, var = mixed_statistics(mu_s, var_s, mu_t, var_t, 4, 12)
    torch.testing.assert_close(mean, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(var, torch.tensor([0.75 + 0.75 + 0.1875 * 4, 3.0 + 0.5]))
    for prior, expected in ((0, (mu_t, var_t)), (float("inf"), (mu_s, var_s))):
        got = mixed_statistics(mu_s, var_s, mu_t, var_t, 16, prior)
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1])
    with pytest.raises(ValueError, match="prior strength must be >= 0"):
        mixed_statistics(mu_s, var_s, mu_t, var_t, 16, -1)


def test_stack_norm_limits_are_eval_and_training_batch_norm_and_leave_no_trace():
    from model.layers import stack_norm

    net = small_bn_net()
    x = torch.randn(6, 3, 10, 10) * 2 + 1  # a shifted "new domain"
    state = {k: v.clone() for k, v in net.state_dict().items()}
    plain = net(x)
    with stack_norm(net, float("inf")):
        torch.testing.assert_close(net(x), plain)
    with stack_norm(net, 0):
        own = net(x)
    net.train()
    with torch.no_grad():
        batch_stats = net(x)  # training-mode batch norm: the batch's own (biased) statistics
    net.eval().load_state_dict(state)
    torch.testing.assert_close(own, batch_stats, atol=1e-5, rtol=1e-5)
    with stack_norm(net, 16):
        half = net(x)
    assert not torch.allclose(half, plain, atol=1e-3) and not torch.allclose(half, own, atol=1e-3)
    # Nothing stays behind: same state, same eval output, no hooks.
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    torch.testing.assert_close(net(x), plain)
    assert all(not m._forward_hooks for m in net.modules())
    with stack_norm(net, None):
        torch.testing.assert_close(net(x), plain)
    with pytest.raises(ValueError, match="no BatchNorm2d"), stack_norm(torch.nn.Conv2d(3, 3, 1), 16):
        pass


def test_stack_norm_depends_on_the_stack_only_as_a_set_and_runs_under_bf16():
    from model.layers import stack_norm

    net = build_model(ModelConfig(input_size=64)).eval()
    x = torch.rand(5, 3, 64, 64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad(), stack_norm(net, 16):
        a, b = net(x), net(x[perm])
        torch.testing.assert_close(b, a[perm], atol=1e-4, rtol=1e-4)
        # Each page's output depends on its stack: another companion changes it.
        other = net(torch.cat([x[:4], torch.rand(1, 3, 64, 64) * 0.2]))
        assert not torch.allclose(other[:4], a[:4], atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c = net(x).float()
    assert torch.isfinite(c).all() and torch.allclose(c, a, atol=0.1)


def test_stack_norm_early_scope_adapts_only_the_stages_before_the_first_mixstyle_site():
    from model.layers import stack_norm
    from model.layers.stack_norm import in_scope

    names = [n for n, m in build_model(ModelConfig(), ensemble_size=2).named_modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(names) == 2 * 122 and sum(in_scope(n, "early") for n in names) == 2 * 14
    assert in_scope("members.1.features.transition1.norm", "early")
    assert not in_scope("members.1.features.denseblock2.denselayer1.norm1", "early")
    assert not in_scope("features.norm5", "early") and all(in_scope(n, "all") for n in names)
    with pytest.raises(ValueError, match="scope 'late'"):
        in_scope("features.norm0", "late")
    net = build_model(ModelConfig(input_size=64)).eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        plain = net(x)
        with stack_norm(net, 16, "early"):
            early = net(x)
        with stack_norm(net, 16):
            every = net(x)
    assert not torch.allclose(early, plain, atol=1e-4) and not torch.allclose(early, every, atol=1e-4)
