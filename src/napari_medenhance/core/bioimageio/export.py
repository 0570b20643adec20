"""Export a napari-medenhance model as a BioImage.IO package (the package's ``__init__``
describes what the zip holds): the description, both weight formats with the architecture
source, test tensors checked against the plugin's engine, cover and README."""


from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ExportResult", "PackageError", "architecture_source", "export_package"]

#: Format version of the descriptions written here (bioimageio.spec 0.5).
FORMAT_VERSION = "0.5.4"
#: Key of this plugin's section in the description's ``config``.
CONFIG_KEY = "napari-medenhance"
ARCH_FILE = "medenhance_arch.py"

# The papers to cite, per architecture (DOIs checked against the publishers' pages).
_CITE: dict[str, list[dict[str, str]]] = {
    "dran": [
        {"text": "Sharif, Naqvi, Biswas. Learning Medical Image Denoising with Deep Dynamic "
                 "Residual Attention Network. Mathematics 8(12):2192, 2020",
         "doi": "10.3390/math8122192"},
        {"text": "Chen, Dai, Liu, Chen, Yuan, Liu. Dynamic Convolution: Attention over "
                 "Convolution Kernels. CVPR 2020", "doi": "10.1109/CVPR42600.2020.01104"},
    ],
    "dpe": [
        {"text": "Sharif, Naqvi, Biswas, Loh. Deep Perceptual Enhancement for Medical Image "
                 "Analysis. IEEE JBHI 26(10):4826-4836, 2022", "doi": "10.1109/JBHI.2022.3168604"},
    ],
    "msgan": [
        {"text": "Zhu, Yang, Lio. How Can We Make GAN Perform Better in Single Medical Image "
                 "Super-Resolution? A Lesion Focused Multi-Scale Approach. ISBI 2019 "
                 "(arXiv:1901.03419)", "doi": "10.48550/arXiv.1901.03419"},
    ],
    "srresnet": [
        {"text": "Ledig et al. Photo-Realistic Single Image Super-Resolution Using a Generative "
                 "Adversarial Network. CVPR 2017 (arXiv:1609.04802)",
         "doi": "10.48550/arXiv.1609.04802"},
    ],
}
_TASK_WORDS = {"denoise": ("denoiser", "denoising"), "enhance": ("enhancer", "image-enhancement"),
               "sr": ("super-resolution", "super-resolution")}
_DEFAULT_AUTHORS = [{"name": "napari-medenhance developers"}]
_DEFAULT_LICENSE = "BSD-3-Clause"  # the plugin's licence (LICENSE)


class PackageError(ValueError):
    """A package cannot be written or read: what is wrong and what to do."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_package` wrote and measured.

    Attributes:
        path: the zip.
        engine_max_abs_diff: largest ``|package − engine|`` on the test input, in the image's
            units (both in float32 on the CPU).
        input_range: ``(lo, hi)`` of the test input, to judge that difference against.
        files: names inside the zip.
    """

    path: Path
    engine_max_abs_diff: float
    input_range: tuple[float, float]
    files: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# the architecture source


_BUNDLE_SKIP = re.compile(r"# bundle: leave out.*?# bundle: end\n", re.S)


def _module_sources(cls: type) -> list[str]:
    """Source files of ``cls``'s module and the package modules it imports (relative imports,
    recursively), dependencies first, with their relative and ``__future__`` imports removed."""
    import importlib

    order: list[str] = []
    texts: dict[str, str] = {}

    def visit(module_name: str) -> None:
        if module_name in texts:
            return
        module = importlib.import_module(module_name)
        text = Path(inspect.getfile(module)).read_text(encoding="utf-8")
        texts[module_name] = text
        package = module_name.rsplit(".", 1)[0]
        for dep in re.findall(r"^from \.(\w+) import .*$", text, re.M):
            visit(f"{package}.{dep}")
        order.append(module_name)

    visit(cls.__module__)
    out = []
    for name in order:
        text = re.sub(r"^from __future__ import annotations\n", "", texts[name], flags=re.M)
        text = re.sub(r"^from \.\w+ import \(.*?\)\n", "", text, flags=re.M | re.S)
        text = re.sub(r"^from \.\w+ import .*\n", "", text, flags=re.M)
        out.append(f"# ---- {name} ----\n{text}")
    return out


def architecture_source(arch: str) -> str:
    """One Python file defining ``MedEnhanceModel`` for ``arch``: the network's module(s) and
    the intensity-mapping wrapper; it imports only torch (and the standard library)."""
    from .. import _bioimageio_model as wrapper
    from ..nets import ARCHITECTURES

    if arch not in wrapper.NET_CLASSES:
        raise PackageError(f"architecture {arch!r} cannot be exported to BioImage.IO; exportable: "
                           f"{', '.join(sorted(wrapper.NET_CLASSES))}")
    parts = _module_sources(ARCHITECTURES[arch])
    tail = Path(inspect.getfile(wrapper)).read_text(encoding="utf-8")
    tail = _BUNDLE_SKIP.sub("", tail)
    tail = re.sub(r"^from __future__ import annotations\n", "", tail, flags=re.M)
    head = (f'"""Architecture of a napari-medenhance {arch.upper()} model for BioImage.IO: '
            "the network and its intensity mapping.\n\nGenerated by napari_medenhance.core."
            'bioimageio from the plugin\'s sources; needs only torch."""\n\n'
            "from __future__ import annotations\n\n")
    return head + "\n\n".join([*parts, "# ---- napari_medenhance.core._bioimageio_model ----\n"
                                       + tail])


def _load_architecture(path: Path) -> Any:
    """The module defined by an architecture file (the package's own code, for the checks)."""
    import importlib.util
    import sys

    name = f"_medenhance_bioimageio_arch_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and TorchScript look classes up by module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# test data


def _test_image(task: str, channels: int, pad: int) -> tuple[np.ndarray, str]:
    """``((1, C, H, W) float32, what)`` made from the shipped sample data."""
    from napari_medenhance.sample_data import load

    rng = np.random.default_rng(20240611)
    if task == "enhance" or channels == 3:
        rgb = load("ihc_rgb")
        h = w = 128 if pad <= 16 else 2 * pad
        y0, x0 = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
        img = np.moveaxis(rgb[y0:y0 + h, x0:x0 + w, :3].astype(np.float32), -1, 0)
        return img[None], f"a {h}×{w} crop of the immunohistochemistry sample (RGB, 0–255)"
    if task == "sr":
        ct = load("ct_slice")  # a head: the crop holds the skull and the brain under it
        img = ct[70:134, 200:264].astype(np.float32)
        return img[None, None], "a 64×64 crop of the CT sample slice (Hounsfield units)"
    mr = load("mr_slice")  # a shoulder: the crop holds the humeral head and the joint
    crop = mr[300:556, 280:536].astype(np.float32)
    sigma = 25.0 / 255.0 * float(crop.max() - crop.min())
    noisy = crop + rng.normal(0.0, sigma, crop.shape).astype(np.float32)
    return noisy[None, None], ("a 256×256 crop of the MR sample slice (12-bit) with Gaussian "
                               f"noise of σ = 25/255 of its range ({sigma:.1f})")


def _engine_output(info: Any, image: np.ndarray) -> np.ndarray:
    """The plugin's engine on ``image`` ((1, C, H, W)), in float32 on the CPU, no bf16."""
    from .. import engine, runtime, zoo

    net, _ = zoo.load_model(info.path, device="cpu")
    module = runtime.inference_module(net, info)
    kw = runtime.engine_kwargs(info)
    kw.pop("cpu_bf16", None)
    rgb = image.shape[1] == 3
    plane = np.moveaxis(image[0], 0, -1) if rgb else image[0, 0]
    out = engine.apply(plane, module, device="cpu", tile=None, half=False, rgb=rgb, **kw)
    return (np.moveaxis(out, -1, 0)[None] if rgb else out[None, None]).astype(np.float32)


def _cover(inp: np.ndarray, out: np.ndarray, path: Path) -> None:
    """input | output side by side (2:1), each scaled to its own 0.5–99.5 % range."""
    from PIL import Image

    def rgb8(a: np.ndarray, size: int) -> Image.Image:
        a = np.moveaxis(a[0], 0, -1)
        lo, hi = np.percentile(a, (0.5, 99.5))
        a = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)
        a = (a * 255).round().astype(np.uint8)
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
        return img.resize((size, size), Image.Resampling.NEAREST
                          if img.width < size else Image.Resampling.LANCZOS)

    size = 256
    sheet = Image.new("RGB", (2 * size, size))
    sheet.paste(rgb8(inp, size), (0, 0))
    sheet.paste(rgb8(out, size), (size, 0))
    sheet.save(path, optimize=True)


# --------------------------------------------------------------------------------------------
# export


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rdf_name(text: str) -> str:
    """A description name: letters, digits, ``_+- ()``, 5-128 characters."""
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", " ", text)
    name = re.sub(r"\s+", " ", name).strip()
    return (name + " model")[:128] if len(name) < 5 else name[:128]


def _authors(authors: Sequence[str] | None, card: dict) -> list[dict[str, str]]:
    """``"Name"`` or ``"Name (Affiliation)"`` strings -> description authors."""
    items = list(authors or [])
    if not items and isinstance(card.get("authors"), list):
        items = [a if isinstance(a, str) else str(a.get("name", "")) for a in card["authors"]]
    out = []
    for item in items:
        m = re.match(r"^\s*([^()]+?)\s*(?:\((.+)\))?\s*$", str(item))
        if m and m.group(1):
            entry = {"name": m.group(1).replace("/", " ")}
            if m.group(2):
                entry["affiliation"] = m.group(2)
            out.append(entry)
    return out or list(_DEFAULT_AUTHORS)


def _validation_section(card: dict) -> list[str]:
    """The model card's validation numbers as markdown, or a sentence saying there are none."""
    lines: list[str] = []
    val = card.get("validation")
    if isinstance(val, dict) and val:
        rows = []
        for when in ("before", "after"):
            entry = val.get(when)
            metrics = entry.get("metrics") if isinstance(entry, dict) else None
            if isinstance(metrics, dict):
                for key, value in metrics.items():
                    if isinstance(value, (int, float)):
                        rows.append(f"| {when} | {key} | {value:.4g} |")
        if rows:
            lines += ["From the model card (validation set of the training run):", "",
                      "| when | metric | value |", "|---|---|---|", *rows, ""]
        else:
            lines += ["From the model card:", "", "```json",
                      json.dumps(val, indent=2, sort_keys=True, default=str), "```", ""]
    card_file = card.get("card_file")
    if card_file and Path(card_file).is_file():
        text = Path(card_file).read_text(encoding="utf-8")
        m = re.search(r"^(#+)\s*Validation.*?$(.*?)(?=^#{1,%d}\s|\Z)" % 6, text, re.M | re.S | re.I)
        if m:
            lines += ["From the model card (`" + Path(card_file).name + "`):", "",
                      m.group(2).strip(), ""]
    if not lines:
        lines = ["This model's card records no validation numbers (an untrained or "
                 "hand-made model). The test tensors below check reproducibility only, not "
                 "quality.", ""]
    return lines


def export_package(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    authors: Sequence[str] | None = None,
    license: str | None = None,
    name: str | None = None,
    description: str | None = None,
) -> ExportResult:
    """Write a BioImage.IO model package (zip) of a napari-medenhance model.

    Args:
        model: registered model name or ``.safetensors`` path (``medenhance models``).
        out: the zip to write (``.zip`` is added when missing); its folder is created.
        authors: ``"Name"`` or ``"Name (Affiliation)"``; default: the card's, else the plugin's
            developers.
        license: SPDX identifier; default the card's ``license``, else ``BSD-3-Clause``.
        name, description: of the package; defaults from the model's name, task and card.

    Returns:
        :class:`ExportResult` (path, the package's largest difference from the engine).

    Raises:
        ValueError / WeightsError: unknown model; :class:`PackageError`: an architecture that
        cannot be exported, or a package network that does not reproduce the engine.
    """
    from napari_medenhance import __version__ as plugin_version

    from .. import runtime, zoo

    info = zoo.get_model(model)
    arch = info.arch
    out = Path(out)
    if out.suffix.lower() != ".zip":
        out = out.with_name(out.name + ".zip")
    out.parent.mkdir(parents=True, exist_ok=True)
    card = dict(info.card)
    kw = runtime.engine_kwargs(info)
    from ..nets import ARCHITECTURES

    net_cls = ARCHITECTURES.get(arch)
    mode = "plain"
    if info.task == "denoise" and callable(getattr(net_cls, "denoise", None)):
        mode = "denoise"
    elif tuple(getattr(net_cls, "value_range", (0.0, 1.0))) == (-1.0, 1.0):
        mode = "signed"
    io_channels = 3 if info.task == "enhance" else 1
    pad = int(kw["pad_multiple"])
    kwargs = {"arch": arch, "config": dict(info.config), "mode": mode,
              "net_channels": int(info.channels), "scale": int(info.scale), "pad_multiple": pad}
    if "input_percentiles" in kw:
        kwargs["stretch"] = [float(v) for v in kw["input_percentiles"]]
    if kw.get("border"):
        kwargs["border"] = int(kw["border"])

    with tempfile.TemporaryDirectory(prefix="medenhance-bioimageio-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / ARCH_FILE).write_text(architecture_source(arch), encoding="utf-8")
        module = _load_architecture(tmp / ARCH_FILE)
        wrapped = module.MedEnhanceModel(**kwargs)
        from ..weights import load_state_dict

        state, _ = load_state_dict(info.path, expected_arch=arch)
        wrapped.run.net.load_state_dict(state, strict=True)
        wrapped.eval()
        torch.save(wrapped.state_dict(), tmp / "weights.pt")
        image, what = _test_image(info.task, io_channels, pad)
        scripted = _torchscript(wrapped, image, max(8, pad), arch)
        scripted.save(str(tmp / "weights_torchscript.pt"))
        with torch.inference_mode():
            got = scripted(torch.from_numpy(image)).numpy()
            eager = wrapped(torch.from_numpy(image)).numpy()
        reference = _engine_output(info, image)
        lo, hi = float(image.min()), float(image.max())
        diff = float(np.abs(got - reference).max())
        tol = 1e-3 * max(hi - lo, 1.0)
        if got.shape != reference.shape or diff > tol or float(np.abs(got - eager).max()) > tol:
            raise PackageError(
                f"the package's network does not reproduce the plugin's engine on the test "
                f"input (largest difference {diff:.3g}, allowed {tol:.3g}); not exported")
        np.save(tmp / "test_input.npy", image)
        np.save(tmp / "test_output.npy", got.astype(np.float32))
        import tifffile  # sample tensors: the same arrays as TIFF, for viewers and galleries

        tifffile.imwrite(tmp / "sample_input.tif", image, photometric="minisblack")
        tifffile.imwrite(tmp / "sample_output.tif", got.astype(np.float32), photometric="minisblack")
        _cover(image, got, tmp / "cover.png")
        weights_name = f"{info.name if re.match(r'^[A-Za-z0-9._-]+$', info.name) else 'model'}.safetensors"
        shutil.copyfile(info.path, tmp / weights_name)

        noun, tag = _TASK_WORDS[info.task]
        title = name or f"MedEnhance {arch.upper()} {noun} {info.name}"
        rdf_name = _rdf_name(title)
        lead = f"×{info.scale} {noun}" if info.scale > 1 else noun.capitalize()
        text = description or (
            f"{lead} for medical and "
            f"microscopy images, napari-medenhance model '{info.name}' ({arch.upper()}). Input "
            "and output in the image's own units: the network includes the plugin's intensity "
            "mapping (per-sample min-max to [0, 1] and back).")[:1000]
        license_id = license or str(card.get("license") or _DEFAULT_LICENSE)
        cites = _CITE.get(arch, [])
        readme = _readme(rdf_name, text, info, what, diff, (lo, hi), card, cites, kwargs,
                         license_id, plugin_version)
        (tmp / "README.md").write_text(readme, encoding="utf-8")

        # torch's reflect padding needs a side longer than the mirrored border
        space_in = {"min": max(16, pad, int(kw.get("border", 0)) + 8), "step": max(8, pad)}
        in_axes: list[dict[str, Any]] = [
            {"type": "batch"},
            {"type": "channel", "channel_names": ["red", "green", "blue"] if io_channels == 3
             else ["intensity"]},
            {"type": "space", "id": "y", "size": space_in},
            {"type": "space", "id": "x", "size": space_in},
        ]
        out_axes: list[dict[str, Any]] = [
            {"type": "batch"},
            {"type": "channel", "channel_names": in_axes[1]["channel_names"]},
        ]
        for axis in ("y", "x"):
            entry: dict[str, Any] = {"type": "space", "id": axis,
                                     "size": {"tensor_id": "input", "axis_id": axis}}
            if info.scale > 1:
                entry["scale"] = 1.0 / info.scale
            out_axes.append(entry)
        files = {n: file_sha256(tmp / n) for n in (
            "weights.pt", "weights_torchscript.pt", ARCH_FILE, "test_input.npy",
            "test_output.npy", "sample_input.tif", "sample_output.tif", "cover.png",
            "README.md", weights_name)}
        torch_version = torch.__version__.split("+")[0]
        rdf: dict[str, Any] = {
            "type": "model",
            "format_version": FORMAT_VERSION,
            "name": rdf_name,
            "description": text,
            "authors": _authors(authors, card),
            "cite": cites or [{"text": "napari-medenhance",
                               "url": "https://github.com/napari-medenhance/napari-medenhance"}],
            "license": license_id,
            "tags": ["napari-medenhance", tag, "pytorch", "2d", "medical-imaging",
                     "microscopy" if io_channels == 3 else "radiology"],
            "documentation": "README.md",
            "covers": ["cover.png"],
            "attachments": [{"source": weights_name, "sha256": files[weights_name]}],
            "inputs": [{
                "id": "input",
                "description": "one 2-D image (a plane of a stack), any intensity units",
                "axes": in_axes,
                "test_tensor": {"source": "test_input.npy", "sha256": files["test_input.npy"]},
                "sample_tensor": {"source": "sample_input.tif",
                                  "sha256": files["sample_input.tif"]},
                "data": {"type": "float32"},
                "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
            }],
            "outputs": [{
                "id": "output",
                "description": f"the {noun} output, in the input's units",
                "axes": out_axes,
                "test_tensor": {"source": "test_output.npy", "sha256": files["test_output.npy"]},
                "sample_tensor": {"source": "sample_output.tif",
                                  "sha256": files["sample_output.tif"]},
                "data": {"type": "float32"},
                "postprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
            }],
            "weights": {
                "pytorch_state_dict": {
                    "source": "weights.pt", "sha256": files["weights.pt"],
                    "architecture": {"source": ARCH_FILE, "sha256": files[ARCH_FILE],
                                     "callable": "MedEnhanceModel", "kwargs": kwargs},
                    "pytorch_version": torch_version,
                },
                "torchscript": {
                    "source": "weights_torchscript.pt",
                    "sha256": files["weights_torchscript.pt"],
                    "pytorch_version": torch_version,
                    "parent": "pytorch_state_dict",
                },
            },
            "config": {CONFIG_KEY: {
                "format": 1, "name": info.name, "task": info.task, "arch": arch,
                "config": dict(info.config), "scale": int(info.scale),
                "channels": int(info.channels), "weights": weights_name,
                "exported_with": f"napari-medenhance {plugin_version}",
                "engine_max_abs_diff": diff,
                "intensity_mapping": "inside the network: per-sample min-max to [0, 1], the "
                                     "network, back to the input's units (clipped to its range)",
            }},
        }
        rdf_text = _yaml(rdf)
        tmp_zip = out.with_name(f".{out.name}.tmp")
        with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            entry = zipfile.ZipInfo("rdf.yaml", date_time=(2024, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16  # writestr's default is owner-only
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, rdf_text)
            for n in files:
                zf.write(tmp / n, n)
        os.replace(tmp_zip, out)
    return ExportResult(path=out, engine_max_abs_diff=diff, input_range=(lo, hi),
                        files=("rdf.yaml", *files))


def _torchscript(module: torch.nn.Module, example: np.ndarray, step: int, arch: str) -> Any:
    """``module`` compiled with ``torch.jit.script``, else traced on ``example``; either way
    checked against the eager module on another input size (a trace can freeze sizes)."""
    import warnings

    x = torch.from_numpy(example)
    # TorchScript is deprecated in torch but is the format BioImage.IO consumers load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            compiled = torch.jit.script(module)
        except Exception:  # noqa: BLE001 - e.g. f-strings in a network's input checks
            with torch.no_grad():
                warnings.simplefilter("ignore")  # TracerWarnings about Python values
                compiled = torch.jit.trace(module, x, check_trace=False)
    other = torch.nn.functional.pad(x, [0, step, 0, step], mode="reflect")
    with torch.inference_mode():
        want, got = module(other), compiled(other)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-4 * float(
            want.abs().max().clamp(min=1.0))):
        raise PackageError(f"the {arch!r} network does not export to TorchScript faithfully: "
                           f"on a {tuple(other.shape)} input it gives {tuple(got.shape)} instead "
                           f"of {tuple(want.shape)} (or other values)")
    return compiled


def _yaml(data: dict) -> str:
    import yaml

    class _Plain(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # no &anchors: readers edit it by hand
            return True

    return yaml.dump(data, Dumper=_Plain, sort_keys=False, allow_unicode=True, width=100)


def _readme(name: str, text: str, info: Any, what: str, diff: float, rng: tuple[float, float],
            card: dict, cites: list[dict], kwargs: dict, license_id: str, version: str) -> str:
    noun = _TASK_WORDS[info.task][0]
    scale = f"×{info.scale} in Y and X" if info.scale > 1 else "the same size"
    lines = [
        f"# {name}", "", text, "",
        "## Model", "",
        f"* napari-medenhance model `{info.name}`, task `{info.task}`, architecture "
        f"`{info.arch}`, configuration `{json.dumps(info.config, sort_keys=True)}`.",
        f"* Input: `(batch, channel, y, x)` float32, one 2-D image per sample "
        f"({'RGB' if kwargs['arch'] == 'dpe' or info.task == 'enhance' else 'one channel'}), "
        f"in any units (HU, counts, 0-255...). Output: {scale}, same units.",
        "* Intensity mapping (the plugin's engine, inside the network): the sample's minimum "
        "and maximum map to 0 and 1 (a float image already inside [0, 1] is used as it is), "
        "the network runs, and its result is mapped back to the input's range and clipped to "
        "it. At scale 1 the network's change is added to the input, which keeps an identity "
        "network exact. Gray images are replicated to the network's three channels and the "
        "outputs averaged. A stack is run plane by plane; the plugin maps a whole stack with "
        "one minimum and maximum, this package each plane with its own, so on stacks whose "
        "planes differ in range the two can differ slightly.",
        "* Weights: TorchScript (`weights_torchscript.pt`) and a PyTorch state dict "
        f"(`weights.pt`) with its architecture source (`{ARCH_FILE}`, needs only torch); "
        f"`{kwargs['arch']}`'s napari-medenhance weights file is attached for "
        "`medenhance models --add` (safetensors: loading it runs no code).",
        "",
        "## Use", "",
        "* napari-medenhance: `medenhance models --add THIS.zip` registers it; then the "
        f"widgets and `medenhance {'sr' if info.task == 'sr' else info.task}` run it.",
        "* Python: `bioimageio.core` (`bioimageio predict` / `predict(model=..., inputs=...)`).",
        "* Fiji / deepImageJ, ilastik and other consumers of the BioImage.IO format: import the "
        "zip.",
        "",
        "## Validation", "",
        *_validation_section(card),
        f"Reproducibility, measured at export: on the test input ({what}; values "
        f"{rng[0]:.4g} to {rng[1]:.4g}) the package's network differs from the plugin's engine "
        f"by at most {diff:.3g} (float32 on the CPU). `test_output.npy` is the package's own "
        "output on `test_input.npy`.",
        "",
        "## Citations", "",
        *(f"* {c['text']}. doi:{c['doi']}" if "doi" in c else f"* {c['text']}" for c in cites),
        "",
        "## Licence", "",
        f"{license_id}. Exported by napari-medenhance {version}.",
        "",
    ]
    return "\n".join(lines)
