"""Safe weights I/O: safetensors with our header; pickles, corrupt and foreign files refused."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from napari_medenhance.core.weights import (
    WeightsError,
    load_into,
    load_state_dict,
    read_header,
    save_weights,
)

PICKLE_REFUSED = "pickled PyTorch checkpoints are refused because they can execute code"


class SmallNet(nn.Module):
    """Conv + BatchNorm (float and int64 buffers) + a tied-free head."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, 3, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def make_net(seed: int = 0, width: int = 8) -> SmallNet:
    torch.manual_seed(seed)
    net = SmallNet(width)
    with torch.no_grad():
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.num_batches_tracked.fill_(17)
    return net


CONFIG = {"width": 8, "layers": [1, 2], "name": "small"}


@pytest.fixture()
def saved(tmp_path):
    net = make_net()
    path = save_weights(
        tmp_path / "small.safetensors",
        net,
        arch="small",
        config=CONFIG,
        meta={"note": "unit test", "metrics": {"psnr": 31.5}, "epochs": 3},
    )
    return net, path


def _data_bytes(path) -> int:
    """Size of the tensor section of a safetensors file (without its JSON header)."""
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    return path.stat().st_size - 8 - n


def _no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------
# round trip


def test_round_trip_fp32_exact(saved, tmp_path):
    net, path = saved
    assert path.exists() and _no_temp_files(tmp_path)
    header = read_header(path)
    assert header["format"] == "napari-medenhance"
    assert header["arch"] == "small"
    assert header["config"] == CONFIG
    assert header["meta"] == {"note": "unit test", "metrics": {"psnr": 31.5}, "epochs": 3}
    assert header["tensors"]["conv.weight"] == {"dtype": "F32", "shape": [8, 3, 3, 3]}
    assert header["tensors"]["bn.num_batches_tracked"]["dtype"] == "I64"

    other = make_net(seed=1)
    assert load_into(other, path, expected_arch="small")["arch"] == "small"
    for (k, a), (k2, b) in zip(net.state_dict().items(), other.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype
        assert torch.equal(a, b), k

    state, header2 = load_state_dict(path)
    assert header2 == header
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_fp16_storage(tmp_path):
    net = make_net()
    p32 = save_weights(tmp_path / "a32.safetensors", net, arch="small", config=CONFIG)
    p16 = save_weights(
        tmp_path / "a16.safetensors", net, arch="small", config=CONFIG, dtype=torch.float16
    )
    header = read_header(p16)
    assert header["tensors"]["conv.weight"]["dtype"] == "F16"
    assert header["tensors"]["bn.num_batches_tracked"]["dtype"] == "I64"  # ints untouched
    assert _data_bytes(p16) < 0.55 * _data_bytes(p32)  # floats halved, the int64 counter kept

    stored, _ = load_state_dict(p16, dtype=None)
    assert stored["conv.weight"].dtype == torch.float16
    loaded = make_net(seed=5)
    load_into(loaded, p16)
    assert loaded.conv.weight.dtype == torch.float32
    worst = 0.0
    for k, ref in net.state_dict().items():
        got = loaded.state_dict()[k]
        if ref.is_floating_point():
            rel = ((got - ref).abs() / ref.abs().clamp_min(1e-3)).max().item()
            worst = max(worst, rel)
        else:
            assert torch.equal(got, ref)
    print(f"fp16 storage: max relative weight error {worst:.2e}")
    assert worst <= 2.0**-11  # half an fp16 ulp
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    net.eval(), loaded.eval()
    with torch.no_grad():
        a, b = net(x), loaded(x)
    out_rel = ((a - b).abs().max() / a.abs().max()).item()
    print(f"fp16 storage: max relative output error {out_rel:.2e}")
    assert out_rel < 1e-3


def test_state_dict_input_and_shared_tensors(tmp_path):
    w = torch.randn(4, 4)
    state = {"a.weight": w, "b.weight": w, "view": w[:2]}  # shared storage, a view
    p = save_weights(tmp_path / "s.safetensors", state, arch="x", config={})
    got, _ = load_state_dict(p)
    assert torch.equal(got["b.weight"], w) and torch.equal(got["view"], w[:2])


# --------------------------------------------------------------------------------------------
# atomic writes


def test_failed_write_keeps_old_file(saved, tmp_path, monkeypatch):
    _, path = saved
    before = path.read_bytes()
    bad = dict(make_net(2).state_dict())
    bad["extra"] = [1, 2, 3]  # not a tensor
    with pytest.raises(TypeError, match="'extra' is a list, not a tensor"):
        save_weights(path, bad, arch="small", config=CONFIG)
    assert path.read_bytes() == before and _no_temp_files(tmp_path)

    # a failure after the new bytes were written into the temporary file
    import napari_medenhance.core.weights as W

    def boom(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(W.os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        save_weights(path, make_net(3), arch="small", config=CONFIG)
    assert path.read_bytes() == before and _no_temp_files(tmp_path)
    monkeypatch.undo()

    save_weights(path, make_net(3), arch="small", config=CONFIG)  # a good write replaces it
    assert path.read_bytes() != before and _no_temp_files(tmp_path)
    loaded = make_net(0)
    load_into(loaded, path)
    assert torch.equal(loaded.conv.weight, make_net(3).conv.weight)


def test_bad_save_arguments(tmp_path):
    net = make_net()
    with pytest.raises(ValueError, match="reserved"):
        save_weights(tmp_path / "r.safetensors", net, arch="a", config={}, meta={"arch": "b"})
    with pytest.raises(TypeError, match="JSON"):
        save_weights(tmp_path / "r.safetensors", net, arch="a", config={"f": object()})
    with pytest.raises(ValueError, match="arch"):
        save_weights(tmp_path / "r.safetensors", net, arch="", config={})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# refusals


@pytest.fixture()
def no_unpickling(monkeypatch):
    """Any attempt to unpickle fails the test loudly."""

    def forbidden(*a, **k):
        raise AssertionError("something tried to unpickle")

    class ForbiddenUnpickler:
        def __init__(self, *a, **k):
            forbidden()

    monkeypatch.setattr(pickle, "Unpickler", ForbiddenUnpickler)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)


class _Payload:
    """Unpickling this creates a marker file: proof of code execution."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_save_checkpoint_refused_without_unpickling(tmp_path, legacy, no_unpickling):
    marker = tmp_path / "pwned"
    p = tmp_path / "model.pt"
    obj = {"state_dict": make_net().state_dict(), "evil": _Payload(str(marker))}
    with open(p, "wb") as f:
        torch.save(obj, f, _use_new_zipfile_serialization=not legacy)
    for call in (read_header, load_state_dict, lambda q: load_into(make_net(), q)):
        with pytest.raises(WeightsError) as err:
            call(p)
        msg = str(err.value)
        assert PICKLE_REFUSED in msg and str(p) in msg and "convert" in msg
    assert not marker.exists()


def test_plain_pickle_refused(tmp_path, no_unpickling):
    p = tmp_path / "weights.pth"
    p.write_bytes(pickle.dumps({"w": np.zeros(3)}, protocol=4))
    with pytest.raises(WeightsError, match=PICKLE_REFUSED):
        read_header(p)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        read_header(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsError, match="not a file"):
        load_state_dict(tmp_path)


@pytest.mark.parametrize("keep", [5, 20, -10, -1])
def test_truncated_file_refused(saved, tmp_path, keep):
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep])
    with pytest.raises(WeightsError, match="truncated or corrupt") as err:
        load_into(make_net(), cut)
    assert str(cut) in str(err.value)


def test_random_bytes_refused(tmp_path):
    p = tmp_path / "random.safetensors"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        read_header(p)


def test_invalid_json_header_refused(tmp_path):
    p = tmp_path / "bad.safetensors"
    body = b'{"__metadata__": {"format": "napari-'
    p.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(WeightsError, match="not valid JSON"):
        read_header(p)


def test_lying_tensor_offsets_refused(tmp_path):
    p = tmp_path / "lie.safetensors"
    header = (
        b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 16]}, '
        b'"__metadata__": {"format": "napari-medenhance", "arch": "a", "config": "{}"}}'
    )
    p.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(WeightsError, match="does not fit 16 bytes"):
        read_header(p)


def test_foreign_safetensors_refused(tmp_path):
    p = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"conv.weight": torch.zeros(2, 2)}, str(p))
    with pytest.raises(WeightsError) as err:
        load_into(make_net(), p, expected_arch="small")
    msg = str(err.value)
    assert "without napari-medenhance metadata" in msg and "'conv.weight'" in msg
    assert "arch 'small'" in msg and "save_weights" in msg
    # metadata from another tool is just as foreign
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(p), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="without napari-medenhance metadata"):
        read_header(p)


def test_arch_mismatch_refused(saved):
    _, path = saved
    for call in (
        lambda: read_header(path, expected_arch="dran"),
        lambda: load_state_dict(path, expected_arch="dran"),
        lambda: load_into(make_net(), path, expected_arch="dran"),
    ):
        with pytest.raises(WeightsError, match="arch 'small', but 'dran' was expected"):
            call()


def test_shape_and_name_mismatches_listed(saved):
    _, path = saved
    wide = make_net(width=16)
    with pytest.raises(WeightsError) as err:
        load_into(wide, path)
    msg = str(err.value)
    assert "shape mismatches" in msg
    assert "conv.weight: file (8, 3, 3, 3) vs network (16, 3, 3, 3)" in msg
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    assert all(torch.equal(v, wide.state_dict()[k]) for k, v in before.items())  # untouched

    class Extra(SmallNet):
        def __init__(self):
            super().__init__(8)
            self.tail = nn.Conv2d(3, 3, 1)

    with pytest.raises(WeightsError, match=r"missing from the file: tail\.weight, tail\.bias"):
        load_into(Extra(), path)
    extra = Extra()
    load_into(extra, path, strict=False)  # common tensors load, the new layer stays as is
    assert torch.equal(extra.conv.weight, make_net().conv.weight)

    class Fewer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

    listed = r"not in the network: bn\.bias, bn\.num_batches_tracked"
    with pytest.raises(WeightsError, match=listed):
        load_into(Fewer(), path)
    fewer = Fewer()
    load_into(fewer, path, strict=False)
    assert torch.equal(fewer.conv.weight, make_net().conv.weight)


def test_safetensors_whose_header_length_looks_like_a_pickle_protocol_loads(tmp_path):
    """A header of 384 bytes starts the file with 0x80 0x01, the bytes of a pickle's PROTO."""
    import struct

    from napari_medenhance.core.weights import load_state_dict, read_header, save_weights

    net = torch.nn.Conv2d(1, 1, 1)
    for pad in range(0, 400):
        path = tmp_path / f"w{pad}.safetensors"
        save_weights(path, net, arch="dran", config={}, meta={"name": "x" * pad})
        (n,) = struct.unpack("<Q", path.read_bytes()[:8])
        if n == 384:
            break
        path.unlink()
    else:
        raise AssertionError("no padding gave a 384-byte header")
    assert path.read_bytes()[:2] == b"\x80\x01"
    assert read_header(path)["arch"] == "dran"
    sd = load_state_dict(path)[0]
    assert torch.equal(sd["weight"], net.weight.detach())
