"""Fixed-point quantization: formats, integer reference == fake-quantized PyTorch model, PTQ/QAT on real data, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesplit.cli import main
from edgesplit.errors import EdgesplitError
from edgesplit.models import create_model
from edgesplit.quant.fixed import Fixed, divide_round, format_for, format_per_channel, quantize, requantize, run_integer
from edgesplit.quant.qnet import QuantNet, fake_quant, qgraph_from_model


def test_format_for_range():
    assert format_for(0.9, 8) == Fixed(8, 7)  # Q1.7: range [-1, 127/128]
    assert format_for(1.0, 8) == Fixed(8, 6)  # 1.0 needs an integer bit
    assert format_for(5.0, 8) == Fixed(8, 4)  # 3 integer bits + sign
    assert format_for(300.0, 8) == Fixed(8, -2)  # coarser than integers: negative fraction bits
    assert format_for(0.02, 8) == Fixed(8, 12)  # finer than 2**-7: 127/4096 = 0.031 holds 0.02, 127/8192 would not
    assert format_for(0.02, 8, max_frac=9) == Fixed(8, 9)
    assert str(Fixed(8, 4)) == "Q4.4"


def test_quantize_rounds_half_up_and_saturates():
    fmt = Fixed(4, 1)  # steps of 0.5, integers -8..7
    assert quantize(np.array([0.25, -0.25, 0.74, 3.5, 100.0, -100.0]), fmt).tolist() == [1, 0, 1, 7, 7, -8]


def test_requantize_and_divide_match_real_arithmetic():
    rng = np.random.default_rng(0)
    q = rng.integers(-5000, 5000, 1000)
    out = Fixed(8, 2)
    assert np.array_equal(requantize(q, 6, out), quantize(q / 2.0**6, out))
    assert np.array_equal(requantize(q, 0, Fixed(16, 3)), quantize(q.astype(np.float64), Fixed(16, 3)))
    for n in (3, 7, 49):
        assert np.array_equal(divide_round(q, n, 4, out), quantize(q / 2.0**4 / n, out))


def test_per_channel_formats_round_each_channel_on_its_own_grid():
    w = np.array([[0.9, -0.3], [5.0, 2.6], [0.01, 0.02]])  # (out channels, in)
    fmt = format_per_channel(np.abs(w).max(1), 8)
    assert fmt.frac == (7, 4, 12) and fmt.per_channel and str(fmt) == "Q8[frac 4..12 per channel]"
    for c in range(3):
        assert np.array_equal(quantize(w, fmt)[c], quantize(w[c], Fixed(8, fmt.frac[c])))
    assert np.array_equal(fake_quant(torch.from_numpy(w), fmt).numpy(), quantize(w, fmt) / 2.0 ** np.array(fmt.frac)[:, None])
    # requantize with one input fraction count per channel (axis 1 of an accumulator), shifts both ways
    rng = np.random.default_rng(0)
    acc = rng.integers(-5000, 5000, (10, 3))
    frac_in = np.array([0, 6, 9])
    assert np.array_equal(requantize(acc, frac_in, Fixed(8, 2)), quantize(acc / 2.0**frac_in, Fixed(8, 2)))


def test_fake_quant_passes_gradients_straight_through():
    x = torch.tensor([0.3, -0.7, 2.0], requires_grad=True)
    y = fake_quant(x, Fixed(4, 2))
    assert y.tolist() == [0.25, -0.75, 1.75]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def _random_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "name,shape",
    [("resnet18-split2", (1, 28, 28)), ("squeezenet", (3, 32, 32)), ("bundlenet-c", (3, 16, 32)), ("resnet18", (3, 64, 64))],
)
@pytest.mark.parametrize("wbits,fbits,per_channel", [(8, 8, False), (4, 6, False), (16, 12, False), (4, 6, True)])
def test_integer_reference_matches_fake_quantized_model_exactly(name, shape, wbits, fbits, per_channel):
    model = _random_bn(create_model(name, num_classes=10, in_chans=shape[0], input_size=shape[1:]))
    qnet = QuantNet(qgraph_from_model(model, shape))
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (qnet(x) - model(x)).abs().max() < 1e-4  # the folded float graph is the model
        qnet.calibrate(
            [torch.randn(16, *shape, generator=torch.Generator().manual_seed(2))], wbits, fbits, per_channel=per_channel
        )
        assert all(w.per_channel == per_channel for w in qnet.scheme.weights.values())
        fq = qnet.double()(x.double()).numpy()
    y_int, fmt = run_integer(qnet.float().export_graph(), qnet.scheme, x.numpy())
    assert np.array_equal(fq, y_int.reshape(len(x), -1) / 2.0**fmt.frac)


def test_per_branch_widths_and_float_parts():
    """A fleet runs each branch at its own device's widths (or float on a CPU); the head in float."""
    shape = (1, 28, 28)
    model = _random_bn(create_model("resnet18-split2", num_classes=10, in_chans=1, input_size=shape[1:], width_mult=0.25))
    qnet = QuantNet(qgraph_from_model(model, shape))
    calib = [torch.randn(16, *shape, generator=torch.Generator().manual_seed(2))]
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    scheme = qnet.calibrate(calib, 8, 8, {"/branches.0/": (6, 5), "/branches.1/": None, "": None})
    for op in qnet.graph.ops:
        w, f = scheme.weights.get(op.name), scheme.features[op.output]
        if op.name.startswith("/branches.0/"):
            assert (w is None or w.bits == 6) and (f is None or f.bits == 5 or op.op == "flatten")
        elif op.has_weights:
            assert w is None
    with torch.no_grad():
        y_mixed = qnet(x)
        qnet.calibrate(calib, 8, 8, {"": None})  # everything float but the input: the float model on quantized pixels
        assert (
            qnet(x)
            - model(
                torch.clamp(
                    torch.floor(x * 2.0 ** scheme.features["input"].frac + 0.5),
                    scheme.features["input"].qmin,
                    scheme.features["input"].qmax,
                )
                / 2.0 ** scheme.features["input"].frac
            )
        ).abs().max() < 1e-4
        assert (y_mixed - qnet(x)).abs().max() > 0  # branch0 at 6/5 bits changes the answer
    with pytest.raises(EdgesplitError, match="fully quantized"):
        run_integer(qnet.export_graph(), qnet.calibrate(calib, 8, 8, {"/branches.1/": None}), x.numpy())


def test_ptq_and_qat_on_real_data(tiny_run, tmp_path, capsys):
    out = tmp_path / "q.json"
    assert (
        main(
            [
                "quantize",
                str(tiny_run),
                "--wbits",
                "4",
                "--fbits",
                "4",
                "--max-test",
                "300",
                "--calib-images",
                "200",
                "--qat-epochs",
                "1",
                "--qat-images",
                "512",
                "--sweep",
                "6",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert "top-1: float" in capsys.readouterr().out  # a JSON file written, and the summary still printed
    r = json.loads(out.read_text())
    assert 0 <= r["ptq_top1"] <= 1 and 0 <= r["qat_top1"] <= 1 and r["test_images"] == 300
    assert r["qat_history"][0]["loss"] > 0 and r["qat_images"] == 512
    assert {(row["varied"], row["wbits"], row["fbits"]) for row in r["sweep"]} == {("weights", 6, 16), ("features", 16, 6)}
    assert r["size"]["quantized_bytes"] < r["size"]["float32_bytes"] / 6  # 4-bit weights
    assert all(row["weight_format"].startswith("Q") for row in r["layers"])


def test_qat_lowers_the_loss_of_a_quantized_model(tiny_run):
    from edgesplit.data.datasets import load_dataset
    from edgesplit.quant.quantize import qat
    from edgesplit.training.checkpoint import checkpoint_preprocess, load_model

    model, ckpt = load_model(tiny_run)
    pre = checkpoint_preprocess(ckpt)
    train = load_dataset("fashion-mnist", "train", size=pre.size, in_chans=1)
    qnet = QuantNet(qgraph_from_model(model, (1, *pre.size)))
    from edgesplit.data.transforms import to_tensor

    qnet.calibrate([to_tensor(train.images(np.arange(256)), pre)], 4, 4, per_channel=True)
    history = qat(qnet, train, np.arange(512), pre, epochs=3, lr=0.05, batch_size=32)  # the tiny model is near chance
    assert history[2]["loss"] < history[1]["loss"] < history[0]["loss"] - 0.005


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--wbits", "1"], "--wbits must be between 2 and 16"),
        (["--fbits", "17"], "--fbits must be between 2 and 16"),
        (["--qat-epochs", "-1"], "--qat-epochs must be 0 or more"),
        (["--sweep", "40"], "--sweep must be between 2 and 16"),
    ],
)
def test_bad_input_is_one_line(tiny_run, argv, needle, capsys):
    assert main(["quantize", str(tiny_run), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_unsupported_operator_is_named():
    class WithSigmoid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return torch.sigmoid(self.conv(x)).flatten(1)

    with pytest.raises(EdgesplitError, match=r"no fixed-point rule for .*\(Sigmoid\)"):
        qgraph_from_model(WithSigmoid(), (1, 8, 8))


# ---------------------------------------------------------------- int8 QDQ export, served by real workers
@pytest.fixture(scope="module")
def int8_export_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_int8")
    assert main(["export", str(tiny_run), "--out", str(out), "--int8", "--calib-images", "64"]) == 0
    return out


def test_int8_export_has_qdq_parts_and_a_verified_manifest(int8_export_dir):
    import onnx

    from edgesplit.manifest import load_manifest

    m = load_manifest(int8_export_dir)  # sha256 of every int8 part verified
    body = json.loads((int8_export_dir / "manifest.json").read_text())
    assert body["precision"] == "int8-qdq" and body["calibration_images"] == 64
    ops = {n.op_type for n in onnx.load(str(m.path(m.part("branch0")))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_export_served_by_workers_agrees_with_float(tiny_run, tiny_export, int8_export_dir):
    import edgesplit
    from edgesplit.data.datasets import load_dataset
    from edgesplit.runtime.cluster import LocalCluster
    from edgesplit.runtime.local import LocalModel

    ref = LocalModel(tiny_export)
    test = load_dataset("fashion-mnist", "test", size=(28, 28), in_chans=1)
    x = ref.prepare(test.images(np.arange(64)))
    float_pred = ref(x).argmax(1)
    with LocalCluster(int8_export_dir, timeout_ms=5000) as cluster, edgesplit.connect(cluster.plan()) as client:
        int8_logits = client.infer(x)
    assert int8_logits.shape == (64, 10)
    assert np.array_equal(int8_logits.argmax(1), LocalModel(int8_export_dir)(x).argmax(1))  # workers == in-process
    assert (int8_logits.argmax(1) == float_pred).mean() >= 0.8


def test_int8_export_bad_calibration_count(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "x"), "--int8", "--calib-images", "0"]) == 2
    assert "--calib-images must be at least 1" in capsys.readouterr().err


def test_bench_int8_reports_both_precisions(tiny_run, tmp_path):
    out = tmp_path / "b.json"
    assert (
        main(
            [
                "bench",
                "int8",
                str(tiny_run),
                "--calls",
                "3",
                "--rounds",
                "1",
                "--test-images",
                "100",
                "--calib-images",
                "32",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert set(r["parts"]) == {"branch0", "branch1", "head"}
    assert all(p["float32_ms"] > 0 and p["int8_ms"] > 0 and p["int8_bytes"] < p["float32_bytes"] for p in r["parts"].values())
    assert set(r["top1"]) == {"float32", "int8"} and r["test_images"] == 100
