"""Every registered model: shapes, parts, and parameter/MAC counts against hand-computed values."""

import pytest
import torch

from edgesplit.errors import EdgesplitError
from edgesplit.models import SplitNet, create_model, list_models
from edgesplit.models.splitnet import branch_keep_mask
from edgesplit.models.profile import profile_model

SMALL = {"num_classes": 10, "in_chans": 1, "input_size": (28, 28)}


@pytest.mark.parametrize("name", list_models())
def test_every_model_small_input_shapes(name):
    model = create_model(name, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    feats = model.forward_features(torch.randn(2, 1, 28, 28))
    if isinstance(model, SplitNet):
        assert [f.shape for f in feats] == [(2, d) for d in model.feature_dims]
        assert list(model.parts()) == [f"branch{i}" for i in range(model.num_branches)] + ["head"]
    else:
        assert feats.shape == (2, model.num_features)
        # forward = forward_head(forward_features) = the composition of the cut-able blocks
        x = torch.randn(2, 1, 28, 28)
        y = x
        with torch.no_grad():
            for _, block in model.sequential_blocks():
                y = block(y)
            assert torch.allclose(y, model(x), atol=1e-5)


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("bundlenet")])
def test_every_model_imagenet_input_shapes(name):
    model = create_model(name, num_classes=1000).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def _conv(cin, cout, k, hw_out):
    return cin * cout * k * k, cin * cout * k * k * hw_out * hw_out


def test_resnet18_counts_hand_computed():
    # parameters: convs + BN (2 per channel) + fc, written out stage by stage
    params, macs = 0, 0
    p, m = _conv(3, 64, 7, 112)
    params += p + 2 * 64
    macs += m
    hw, cin = 56, 64
    for stage, cout in enumerate([64, 128, 256, 512]):
        if stage:
            hw //= 2
        for block in range(2):
            stride_in = cin if block == 0 else cout
            for c_in in (stride_in, cout):
                p, m = _conv(c_in, cout, 3, hw)
                params += p + 2 * cout
                macs += m
            if block == 0 and cin != cout:
                p, m = _conv(cin, cout, 1, hw)
                params += p + 2 * cout
                macs += m
        cin = cout
    params += 512 * 1000 + 1000
    macs += 512 * 1000
    prof = profile_model(create_model("resnet18"), (3, 224, 224))
    assert prof.params == params == 11_689_512
    assert prof.macs == macs
    assert abs(macs / 1e9 - 1.82) < 0.01  # the usual "1.82 GMACs" (conv + FC)


def test_split2_branch_is_capella_half_width():
    model = create_model("resnet18-split2")
    branch = model.branches[0]
    assert [
        branch.layer1[0].conv1.out_channels,
        branch.layer2[0].conv1.out_channels,
        branch.layer3[0].conv1.out_channels,
        branch.layer4[0].conv1.out_channels,
    ] == [32, 64, 128, 256]
    n = sum(p.numel() for p in branch.parameters())
    assert round(n / 1e6, 2) == 2.80
    assert model.head.fc.in_features == 512


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_resnet18_split_k(k):
    model = create_model(f"resnet18-split{k}", **SMALL)
    assert model.num_branches == k
    assert model.branches[0].layer4[0].conv1.out_channels == round(512 / k)


def test_width_mult_and_unequal_branches():
    model = create_model("resnet18-split2", width_mult=0.5, branch_widths=(3, 1), **SMALL)
    assert model.feature_dims == [192, 64]  # 512 * 0.5 * 3/4, 512 * 0.5 * 1/4
    with pytest.raises(ValueError):
        create_model("resnet18-split2", branch_widths=(1, 2, 3))


def test_alexnet_fc_dominates():
    prof = profile_model(create_model("alexnet"), (3, 224, 224))
    assert prof.params == 61_100_840
    fc = sum(c.params for c in prof.layers if c.kind == "Linear")
    assert fc == 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000


def test_squeezenet_v11_params():
    assert sum(p.numel() for p in create_model("squeezenet").parameters()) == 1_235_496


def test_bundlenet_table2_channels():
    a, c = create_model("bundlenet-a"), create_model("bundlenet-c")
    assert [b.pw.out_channels for b in a.bundles] == [48, 96, 192, 384]
    assert [b.pw.out_channels for b in c.bundles] == [48, 96, 192, 384, 512]
    assert a.default_bits == (16, 8) and create_model("bundlenet-b").default_bits == (16, 16) and c.default_bits == (11, 8)


def test_unknown_model_is_one_line_error():
    with pytest.raises(EdgesplitError, match="unknown model 'resnet19'.*edgesplit models"):
        create_model("resnet19")


def testbranch_keep_mask_never_empty():
    torch.manual_seed(0)
    mask = branch_keep_mask(5000, 2, 0.9, "cpu")
    assert (mask.sum(1) >= 1).all()
    assert 0.3 < 1 - mask.mean().item() < 0.7  # many drops, yet never both


def test_forward_head_missing_branch_equals_zero_features():
    model = create_model("resnet18-split2", **SMALL).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        f = model.forward_features(x)
        masked = model.forward_head(f, torch.tensor([1.0, 0.0]))
        manual = model.head(torch.cat([f[0], torch.zeros_like(f[1])], 1))
    assert torch.allclose(masked, manual)
