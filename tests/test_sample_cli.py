"""diffusion_lab.sample: everything about the process comes from the checkpoint, only the sampler is chosen."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import MissingConfigException

from conftest import compose_train, group_options, small_train_cfg
from diffusion_lab.build import CheckpointError, load_checkpoint
from diffusion_lab.diffusion import (
    CosineSchedule,
    Diffusion,
    EpsPrediction,
    FixedSmallVariance,
    LinearSchedule,
)
from diffusion_lab.errors import UserError
from diffusion_lab.io import save_samples_npz, to_uint8
from diffusion_lab.sample import sample
from diffusion_lab.samplers import DDIMSampler
from diffusion_lab.sampling import class_labels
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

T = 50  # NOT the default (linear, T=1000): the sampler must take both from the checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("trained")
    cfg = small_train_cfg(out, "schedule=cosine", f"schedule.num_timesteps={T}", "trainer.max_steps=2")
    result = train(cfg)
    return Path(result["checkpoint"])


def sample_cfg(ckpt: Path | str, out_dir: Path, *overrides: str):
    return compose_train(
        [f"ckpt={ckpt}", f"out_dir={out_dir}", "device=cpu", "progress=false", *overrides],
        config_name="sample",
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_samples_written_with_the_stored_schedule(checkpoint, tmp_path, monkeypatch):
    # The CLI's schedule default (train.yaml: linear) must never be built: make it explode.
    def no_linear(self, *args, **kwargs):
        raise AssertionError("the sample CLI built a LinearSchedule instead of the checkpoint's schedule")

    monkeypatch.setattr(LinearSchedule, "__init__", no_linear)
    result = sample(sample_cfg(checkpoint, tmp_path, "n=6", "steps=5", "seed=3"))
    monkeypatch.undo()

    npz = Path(result["samples_npz"])
    assert npz.parent == tmp_path and npz.is_file()
    assert Path(result["grid"]).is_file() and Path(result["grid"]).read_bytes()[:4] == b"\x89PNG"
    images = np.load(npz)["images"]
    assert images.dtype == np.uint8 and images.shape == (6, 28, 28, 1)  # NHWC
    assert "DDIMSampler" in result["sampler"] and "steps=5" in result["sampler"]

    # The same samples from a Diffusion built by hand with the trained schedule (cosine, T=50), same noise.
    parts, spec, _ = load_checkpoint(checkpoint)
    assert spec["schedule"]["_target_"].endswith("CosineSchedule") and spec["schedule"]["num_timesteps"] == T

    def by_hand(schedule) -> np.ndarray:
        diffusion = Diffusion(schedule, EpsPrediction(), FixedSmallVariance())
        gen = torch.Generator().manual_seed(3)
        noise = torch.randn((6, 1, 28, 28), generator=gen)
        x = DDIMSampler(steps=5).sample(diffusion, parts.net, noise.shape, "cpu", noise=noise, generator=gen)
        return to_uint8(x.clamp(-1, 1)).permute(0, 2, 3, 1).numpy()

    np.testing.assert_array_equal(images, by_hand(CosineSchedule(T)))
    # ... and the schedule matters: the CLI's default one would have given other samples.
    assert not np.array_equal(images, by_hand(LinearSchedule(T)))


def test_ckpt_path_and_its_alias_ckpt_read_the_same_checkpoint(checkpoint, tmp_path):
    def npz(spelling: str, out: str) -> bytes:
        cfg = compose_train(
            [f"{spelling}={checkpoint}", f"out_dir={tmp_path / out}", "device=cpu", "progress=false", "n=2"],
            config_name="sample",
        )
        result = sample(cfg)
        assert cfg.ckpt_path == str(checkpoint)
        return Path(result["samples_npz"]).read_bytes()

    assert npz("ckpt_path", "canonical") == npz("ckpt", "alias")


def test_both_checkpoint_spellings_refused(checkpoint, tmp_path):
    cfg = sample_cfg(checkpoint, tmp_path, f"ckpt_path={checkpoint}")
    with pytest.raises(UserError, match="ckpt= is an alias of ckpt_path=") as err:
        sample(cfg)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_ddpm_sampler_by_name(checkpoint, tmp_path):
    result = sample(sample_cfg(checkpoint, tmp_path, "n=2", "sampler=ddpm", "steps=10", "name=ddpm"))
    assert "DDPMSampler" in result["sampler"]
    assert Path(result["samples_npz"]) == tmp_path / "ddpm.npz"
    assert np.load(tmp_path / "ddpm.npz")["images"].shape == (2, 28, 28, 1)


def test_ancestral_sampling_with_the_other_fixed_variance(checkpoint, tmp_path):
    """The checkpoint (fixed_small) sampled with its own variance named draws the same images; with β_t
    (DDIM's σ̂) other ones, and the file name and summary say which."""
    common = ["n=4", "sampler=ddpm", "steps=5", "seed=3"]
    plain = sample(sample_cfg(checkpoint, tmp_path, *common, "name=plain"))
    same = sample(sample_cfg(checkpoint, tmp_path, *common, "name=same", "sampling_variance=fixed_small"))
    large = sample(sample_cfg(checkpoint, tmp_path, *common, "sampling_variance=fixed_large"))
    images = {
        k: np.load(r["samples_npz"])["images"]
        for k, r in (("plain", plain), ("same", same), ("large", large))
    }
    np.testing.assert_array_equal(images["same"], images["plain"])
    assert not np.array_equal(images["large"], images["plain"])
    assert plain["variance"] == same["variance"] == "fixed_small" and large["variance"] == "fixed_large"
    assert Path(large["samples_npz"]).name == "last_ddpm5_fixed_large_n4.npz"


def test_npz_holds_the_adm_evaluator_names(checkpoint, tmp_path):
    """The ADM / guided-diffusion evaluator reads ``arr_0`` (uint8 NHWC) and the labels as ``arr_1``."""
    result = sample(sample_cfg(checkpoint, tmp_path, "n=3", "steps=2", "name=adm"))
    with np.load(result["samples_npz"]) as saved:
        arr = saved["arr_0"]
        assert arr.dtype == np.uint8 and arr.shape == (3, 28, 28, 1)
        np.testing.assert_array_equal(arr, saved["images"])
        assert "arr_1" not in saved  # an unconditional model has no labels
    labels = torch.tensor([2, 0])
    path = save_samples_npz(torch.rand(2, 3, 4, 5) * 2 - 1, tmp_path / "labelled.npz", labels)
    with np.load(path) as saved:
        assert saved["arr_0"].shape == (2, 4, 5, 3) and saved["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(saved["arr_0"], saved["images"])
        assert saved["arr_1"].tolist() == saved["labels"].tolist() == [2, 0]


@pytest.fixture
def existing_outputs(tmp_path) -> dict[Path, str]:
    """Outputs of the same name already there, which a failed run must leave as they are."""
    files = {tmp_path / "out.npz": "old samples", tmp_path / "out.png": "old grid"}
    for path, text in files.items():
        path.write_text(text)
    return files


def assert_kept(files: dict[Path, str]) -> None:
    for path, text in files.items():
        assert path.read_text() == text, path
    folder = next(iter(files)).parent
    assert {p for p in folder.iterdir() if p.suffix in (".npz", ".png")} == set(files)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["+schedule=linear"], "schedule is fixed by the checkpoint"),
        (["+model=unet_small"], "model is fixed by the checkpoint"),
        (["sampler=ddpm", "eta=0.5"], "eta=0.5 applies to sampler=ddim only"),
        (["sampler=ddim", "eta=-1"], r"eta=-1 is invalid: η must be >= 0 \(0 deterministic, 1 DDPM-like\)"),
        (["n=0"], "n=0 is invalid"),
        (["sampler=ddim", "sampling_variance=fixed_large"], "is read by ancestral sampling alone"),
        (["sampler=ddpm", "sampling_variance=large"], "sampling_variance=large is unknown"),
    ],
)
def test_refused_overrides(checkpoint, tmp_path, existing_outputs, overrides, match):
    with pytest.raises(UserError, match=match) as err:
        sample(sample_cfg(checkpoint, tmp_path, "name=out", *overrides))
    assert "\n" not in str(err.value)
    assert_kept(existing_outputs)


def test_unknown_sampler_lists_the_choices(tmp_path):
    with pytest.raises(MissingConfigException) as err:
        sample_cfg(tmp_path / "x.ckpt", tmp_path, "sampler=nope")
    for option in group_options("sampler"):
        assert option in str(err.value)


def test_truncated_checkpoint(checkpoint, tmp_path, existing_outputs):
    data = checkpoint.read_bytes()
    before = digest(checkpoint)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint") as err:
        sample(sample_cfg(truncated, tmp_path, "name=out"))
    assert "\n" not in str(err.value) and str(truncated) in str(err.value)
    assert truncated.read_bytes() == data[: len(data) // 2] and digest(checkpoint) == before
    assert_kept(existing_outputs)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"this is not a checkpoint\n", "truncated or not a checkpoint"),
        (None, "not written by diffusion_lab"),  # a valid torch file of something else
    ],
)
def test_not_a_checkpoint(tmp_path, existing_outputs, content, match):
    path = tmp_path / "other.ckpt"
    if content is None:
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    else:
        path.write_bytes(content)
    before = digest(path)
    with pytest.raises(CheckpointError, match=match) as err:
        sample(sample_cfg(path, tmp_path, "name=out"))
    assert "\n" not in str(err.value)
    assert digest(path) == before
    assert_kept(existing_outputs)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        sample(sample_cfg(tmp_path / "nope.ckpt", tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_save_grid_keeps_the_pixels_and_writes_one_channel_images_as_greyscale(tmp_path, channels, mode):
    from PIL import Image

    from diffusion_lab.io import save_grid

    images = torch.rand(4, channels, 5, 6) * 2 - 1
    with Image.open(save_grid(images, tmp_path / "grid.png", nrow=2)) as im:
        assert im.mode == mode and im.size == (2 + 2 * (6 + 2), 2 + 2 * (5 + 2))
        pixels = np.asarray(im).reshape(im.size[1], im.size[0], channels)
    quantised = to_uint8(images).permute(0, 2, 3, 1).numpy()
    # Image 3 (second row, second column) sits after two paddings and one image on each axis.
    np.testing.assert_array_equal(pixels[2 + 5 + 2 : 2 + 5 + 2 + 5, 2 + 6 + 2 : 2 + 6 + 2 + 6], quantised[3])
    assert (pixels[:2] == 255).all() and (pixels[:, :2] == 255).all()


@pytest.mark.parametrize("classes", ["abc", 5, [1.5]])
def test_classes_must_be_a_list_of_class_indices(classes):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"classes": classes, "guidance": 0.0})
    with pytest.raises(UserError, match=r"must be a list of class indices \(e.g. classes=\[0,3\]\) or null"):
        class_labels(cfg, 10, 4)
