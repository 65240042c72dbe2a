from edgesplit.models import create_model
from edgesplit.models.profile import balanced_partition, block_costs, communication, profile_model


def test_activation_bytes_and_macs_of_a_conv():
    import torch.nn as nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    prof = profile_model(model, (3, 10, 10))
    conv = prof.layers[0]
    assert conv.macs == 8 * 10 * 10 * 3 * 9
    assert conv.params == 8 * 3 * 9 + 8
    assert conv.out_bytes == 8 * 10 * 10 * 4


def test_balanced_partition_is_optimal():
    assert balanced_partition([5, 1, 1, 1, 5], 2) == [2]  # groups 6 | 7
    assert balanced_partition([1, 1, 1, 1], 4) == [1, 2, 3]
    assert balanced_partition([10, 1, 1], 2) == [1]


def test_balanced_partition_for_devices_of_different_speeds():
    """Each group's MACs over its device's speed: a device twice as fast takes twice the work."""
    assert balanced_partition([1] * 6, 2) == [3]
    assert balanced_partition([1] * 6, 2, speeds=[2.0, 1.0]) == [4]  # 4 / 2 = 2 | 2 / 1 = 2
    assert balanced_partition([1] * 6, 3, speeds=[4.0, 1.0, 1.0]) == [4, 5]


def test_split_sends_fewer_bytes_than_layerwise_at_28px():
    shape = (1, 28, 28)
    kw = {"num_classes": 10, "in_chans": 1, "input_size": (28, 28)}
    comm = communication(create_model("resnet18-split2", **kw), create_model("resnet18", **kw), shape)
    split, lw = comm["split"], comm["layerwise"]
    assert split["total_bytes"] == 2 * 28 * 28 * 4 + 2 * 256 * 4
    assert lw["sequential_transfers"] == 3 and split["sequential_transfers"] == 2
    blocks = block_costs(create_model("resnet18", **kw), shape)
    assert lw["total_bytes"] == 28 * 28 * 4 + sum(lw["cut_activation_bytes"]) + blocks[-1].out_bytes
    assert split["total_bytes"] < lw["total_bytes"]
