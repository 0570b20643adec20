"""One behaviour for every `medenhance` command (issue 18): the same reader and messages in
`metrics` as elsewhere, one error / exit-status convention documented in `--help` and the
README, `--version`, the right default model named, `train --from shipped` in command-line
words, and what happens to an output folder that does not exist."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _images import write_ct_series
from _tiny_models import save_tiny_msgan_pair

import napari_medenhance
from napari_medenhance import cli
from napari_medenhance.cli import main
from napari_medenhance.core.io import write_volume
from napari_medenhance.metrics import lassim

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--device", "cpu"]


def _one_line_error(capsys, command: str) -> str:
    """stderr of a failed command: one line, ``medenhance COMMAND: ...``, no traceback (a
    progress bar drawn before the error may stand above it)."""
    lines = capsys.readouterr().err.strip().split("\n")
    bars = [line for line in lines[:-1] if not re.search(r"\[[\d:]+, .*/s\]", line)]
    assert not bars and "Traceback" not in lines[-1], lines
    assert lines[-1].startswith(f"medenhance {command}: "), lines
    return lines[-1]


@pytest.mark.parametrize("fmt", [".nii.gz", ".zarr", "dicom"])
def test_metrics_reads_what_the_other_commands_read(fmt, tmp_path, nuclei, nuclei_smoothed, capsys):
    a, b = nuclei[:3, 40:104, 30:94], nuclei_smoothed[:3, 40:104, 30:94]
    if fmt == "dicom":
        pytest.importorskip("pydicom")
        a, b = (np.clip(x, 0, 4095).astype(np.uint16) for x in (a, b))
        write_ct_series(tmp_path / "in", a)
        write_ct_series(tmp_path / "out", b)
        paths = [tmp_path / "in", tmp_path / "out"]
    else:
        paths = [write_volume(tmp_path / f"in{fmt}", a, spacing=(2.0, 0.5, 0.5)),
                 write_volume(tmp_path / f"out{fmt}", b, spacing=(2.0, 0.5, 0.5))]
    csv_path = tmp_path / "m.csv"
    assert main(["metrics", *map(str, paths), "--csv", str(csv_path)]) == 0
    assert "mean of 3 slices" in capsys.readouterr().out
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 4
    first = float(rows[1].split(",")[rows[0].split(",").index("lassim")])
    if fmt != "dicom":  # DICOM planes are in Hounsfield units (raw - 1024): other values
        np.testing.assert_allclose(first, lassim(a[0], b[0]), atol=1e-9)


def test_metrics_missing_file_is_one_line_and_exit_2(tmp_path, nuclei, capsys):
    a = tmp_path / "in.tif"
    tifffile.imwrite(a, nuclei[:2])
    assert main(["metrics", str(a), str(tmp_path / "nope.tif")]) == 2
    err = _one_line_error(capsys, "metrics")
    assert "nope.tif" in err and "no such file" in err


def test_metrics_corrupt_tiff_is_one_line_and_exit_2(tmp_path, nuclei, capsys):
    a, bad = tmp_path / "in.tif", tmp_path / "bad.tif"
    tifffile.imwrite(a, nuclei[:2])
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 4)  # a TIFF header, then garbage
    assert main(["metrics", str(a), str(bad)]) == 2
    err = _one_line_error(capsys, "metrics")
    assert "bad.tif" in err and "corrupt" in err


def test_metrics_unknown_format_is_one_line_and_exit_2(tmp_path, nuclei, capsys):
    a, other = tmp_path / "in.tif", tmp_path / "notes.xyz"
    tifffile.imwrite(a, nuclei[:2])
    other.write_text("not an image")
    assert main(["metrics", str(a), str(other)]) == 2
    assert "notes.xyz" in _one_line_error(capsys, "metrics")


# ------------------------------------------------------------- one convention, documented


def test_help_and_readme_document_the_exit_statuses(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for status in ("0 done", "1 a folder batch", "2 bad input", "130 interrupted"):
        assert status in text
    assert "'medenhance COMMAND: message'" in text
    readme = ROOT.joinpath("README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Command line"):]
    section = " ".join(section[: section.index("\n## ", 3)].split())
    for status in ("`0`", "`1`", "`2`", "`130`", "medenhance COMMAND: message"):
        assert status in section, status
    assert (cli.EXIT_OK, cli.EXIT_FAILED_FILES, cli.EXIT_BAD_INPUT, cli.EXIT_INTERRUPTED) == (0, 1, 2, 130)


def test_usage_errors_exit_2_like_bad_input(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sr", "a.tif", "b.tif"])  # --scale is required
    assert exc.value.code == cli.EXIT_BAD_INPUT
    assert "medenhance sr: error:" in capsys.readouterr().err


def test_ctrl_c_in_any_command_exits_130_without_traceback(monkeypatch, tmp_path, nuclei, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("napari_medenhance.metrics.iter_stack_metrics", interrupted)
    a = tmp_path / "in.tif"
    tifffile.imwrite(a, nuclei[:2])
    assert main(["metrics", str(a), str(a)]) == 130
    assert _one_line_error(capsys, "metrics") == "medenhance metrics: interrupted"


def test_version_agrees_with_metadata_pyproject_and_readme(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    pyproject = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text(encoding="utf-8"))
    want = pyproject["project"]["version"]
    assert capsys.readouterr().out.strip() == f"medenhance {want}"
    assert napari_medenhance.__version__ == version("napari-medenhance") == want
    major_minor = ".".join(want.split(".")[:2])
    status = re.search(r"\*\*Status \(v([\d.]+)\):\*\*", ROOT.joinpath("README.md").read_text(encoding="utf-8"))
    assert status and status.group(1) == major_minor


# ------------------------------------------------------------------------ model messages


def test_sr_scale_2_without_a_model_names_msgan_x2(isolated_models, tmp_path, capsys):
    src = write_volume(tmp_path / "in.tif", np.zeros((16, 16), np.uint16))
    assert main(["sr", str(src), str(tmp_path / "o.tif"), "--scale", "2", *CPU]) == 2
    err = _one_line_error(capsys, "sr")
    assert "'msgan-x2' weights are not bundled yet" in err and "msgan-x4" not in err
    assert "medenhance train --task sr" in err and "medenhance models --add" in err


def test_no_model_messages_name_medenhance_train(isolated_models, tmp_path, capsys):
    src = write_volume(tmp_path / "in.tif", np.zeros((16, 16), np.uint16))
    assert main(["denoise", str(src), str(tmp_path / "o.tif"), *CPU]) == 2
    err = _one_line_error(capsys, "denoise")
    assert "'dran' weights are not bundled yet" in err and "medenhance train --task denoise" in err
    assert main(["models", "--task", "enhance"]) == 0
    out = capsys.readouterr().out
    assert "medenhance models --add" in out and "medenhance train --task enhance" in out


def test_train_from_shipped_while_nothing_ships_speaks_command_line(isolated_models, tmp_path, capsys):
    data = write_volume(tmp_path / "clean.tif", np.zeros((4, 32, 32), np.uint16))
    assert main(["train", "--task", "denoise", "--data", str(data), "--name", "mine",
                 "--steps", "2", *CPU]) == 2
    err = _one_line_error(capsys, "train")
    assert "--from shipped (the default)" in err and "'dran'" in err and "--from scratch" in err
    assert "start=" not in err and "None" not in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ missing output folders


def test_missing_output_folder_is_created_and_said_for_files_and_folders(isolated_models, tmp_path, capsys):
    save_tiny_msgan_pair(isolated_models)
    src = write_volume(tmp_path / "in" / "a.tif", np.arange(16 * 16, dtype=np.uint16).reshape(16, 16))
    # a file into a missing folder
    dst = tmp_path / "new" / "deeper" / "a_x2.tif"
    assert main(["sr", str(src), str(dst), "--scale", "2", "--model", "tiny-x2", *CPU]) == 0
    assert f"medenhance sr: created the output folder {dst.parent}" in capsys.readouterr().err
    assert dst.is_file()
    # again: the folder exists, nothing to say
    assert main(["sr", str(src), str(dst), "--scale", "2", "--model", "tiny-x2", *CPU]) == 0
    assert "created" not in capsys.readouterr().err
    # a folder into a missing folder
    out_dir = tmp_path / "batch_out"
    assert main(["sr", str(tmp_path / "in"), str(out_dir), "--scale", "2", "--model", "tiny-x2", *CPU]) == 0
    assert f"medenhance sr: created the output folder {out_dir}" in capsys.readouterr().err
    assert (out_dir / "a.tif").is_file()
    # a bad model is refused before anything is created
    missing = tmp_path / "never"
    assert main(["sr", str(tmp_path / "in"), str(missing), "--scale", "2", "--model", "nope", *CPU]) == 2
    assert not missing.exists() and "created" not in capsys.readouterr().err
    # the metrics CSV too
    csv_path = tmp_path / "reports" / "m.csv"
    assert main(["metrics", str(src), str(src), "--level", "1", "--csv", str(csv_path)]) == 0
    assert f"medenhance metrics: created the output folder {csv_path.parent}" in capsys.readouterr().err


def test_metrics_too_deep_level_names_the_option(tmp_path, capsys):
    src = write_volume(tmp_path / "a.tif", np.zeros((16, 16), np.uint16))
    assert main(["metrics", str(src), str(src)]) == 2
    err = _one_line_error(capsys, "metrics")
    assert "--level 1" in err and "level=" not in err
