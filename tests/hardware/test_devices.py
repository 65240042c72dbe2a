import pytest

from edgesplit.errors import EdgesplitError
from edgesplit.hardware.catalog import SHIPPED, get_device, load_catalog


def test_shipped_catalog_matches_datasheets():
    c = load_catalog()
    assert {"pynq-z1", "zybo-z7-20", "ultra96-v2", "zcu102", "raspberry-pi-4", "jetson-nano-cpu"} <= set(c)
    z = c["pynq-z1"]
    assert (z.dsp, z.bram36, z.lut, z.ff, z.dsp_type, z.bram18) == (220, 140, 53200, 106400, "DSP48E1", 280)
    assert (c["ultra96-v2"].dsp, c["ultra96-v2"].bram36, c["ultra96-v2"].lut) == (360, 216, 70560)
    assert (c["zcu102"].dsp, c["zcu102"].bram36, c["zcu102"].lut) == (2520, 912, 274080)
    assert c["raspberry-pi-4"].kind == "cpu" and c["raspberry-pi-4"].peak_gflops == 48.0


def test_user_board_added_and_overrides(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "name: my-board\nkind: cpu\ndescription: x\ncores: 2\nclock_mhz: 1000\n"
        "peak_gflops: 8\nmem_bandwidth_gbs: 4\nstatic_power_w: 1\n"
    )
    (tmp_path / "pynq.yaml").write_text((SHIPPED / "pynq-z1.yaml").read_text().replace("clock_mhz: 100", "clock_mhz: 125"))
    c = load_catalog(tmp_path)
    assert c["my-board"].cores == 2 and c["pynq-z1"].clock_mhz == 125.0


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("name: b\nkind: gpu\n", "kind must be one of"),
        ("name: b\nkind: cpu\ndescription: x\n", "missing field"),
        (
            "name: b\nkind: cpu\ndescription: x\ncores: two\nclock_mhz: 1\npeak_gflops: 1\nmem_bandwidth_gbs: 1\nstatic_power_w: 1\n",
            "cores must be a number",
        ),
        (
            "name: b\nkind: cpu\ndescription: x\ncores: 2\nclock_mhz: -1\npeak_gflops: 1\nmem_bandwidth_gbs: 1\nstatic_power_w: 1\n",
            "clock_mhz must be positive",
        ),
        (
            "name: b\nkind: cpu\ndescription: x\ncores: 2\nclock_mhz: 1\npeak_gflops: 1\nmem_bandwidth_gbs: 1\nstatic_power_w: 1\nturbo: 3\n",
            "unknown field",
        ),
        ("name: [\n", "not valid YAML"),
    ],
)
def test_bad_device_files_are_named(tmp_path, text, pattern):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(EdgesplitError, match=pattern):
        load_catalog(tmp_path)


def test_unknown_device_lists_known():
    with pytest.raises(EdgesplitError, match="unknown device 'pynq-z3'.*pynq-z1"):
        get_device("pynq-z3")
