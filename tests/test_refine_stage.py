"""The refine stage on its own: no Ray, real refiner files."""

import pickle

import numpy as np
import pytest
import torch

from pipeline.manifest import OK
from pipeline.refine.stage import RefineStage, from_tensor, to_tensor
from pipeline.refiner_file import RefinerFileError
from pipeline.models import Refiner, RefinerSpec
from pipeline.refiner_file import save_refiner
from helpers.refine import image, make_refiner


@pytest.fixture
def grey_refiner(tmp_path):
    return make_refiner(str(tmp_path / "grey.safetensors"))


def test_partial_last_batch_is_refined_like_the_rest(grey_refiner, rng):
    images = np.stack([image(rng) for _ in range(10)])
    # On the CPU, where results are exact whatever the batch size (a GPU may pick other
    # kernels, or bf16, per batch size).
    stage = RefineStage(grey_refiner, device="cpu", batch_size=4)  # chunks of 4, 4 and a partial 2
    refined = stage.refine_images(images)
    one_by_one = np.concatenate(
        [RefineStage(grey_refiner, device="cpu", batch_size=1).refine_images(images[i : i + 1]) for i in range(10)]
    )
    assert refined.shape == images.shape and refined.dtype == np.uint8
    np.testing.assert_array_equal(refined, one_by_one)
    assert (refined[-2:] != images[-2:]).any(), "the last partial chunk must be refined"


def test_a_refiner_with_grain_gives_the_same_bytes_in_any_batch(tmp_path, rng):
    # The grain is a function of each image: refining again, in other batches, is exact.
    torch.manual_seed(0)
    refiner = Refiner(RefinerSpec(kernel=3, features=4, blocks=1, tone_map=True, grain=True))
    with torch.no_grad():
        refiner.tone.table.copy_(0.2 + 0.6 * torch.linspace(0, 1, refiner.tone.table.shape[1])[None])
        refiner.grain.sigma.fill_(0.1)
    path = str(tmp_path / "grain.safetensors")
    save_refiner(path, refiner, "tiny", 16, 16)
    images = np.stack([image(rng) for _ in range(10)])
    refined = RefineStage(path, device="cpu", batch_size=4).refine_images(images)
    again = np.concatenate([RefineStage(path, device="cpu", batch_size=3).refine_images(images[i : i + 5]) for i in (0, 5)])
    np.testing.assert_array_equal(refined, again)
    # Grain on grey paper: neighbouring pixels of a flat image differ.
    flat = np.full((2, 16, 16), 128, np.uint8)
    flat[1, 0, 0] = 200  # another image after the tone curve too
    grainy = RefineStage(path, device="cpu").refine_images(flat).astype(int)
    assert np.abs(np.diff(grainy[0], axis=1)).mean() > 10 and (grainy[0] != grainy[1]).mean() > 0.5


@pytest.mark.parametrize(
    "channels,dtype,bits", [(1, np.uint8, 8), (3, np.uint8, 8), (1, np.uint16, 16)], ids=["grey8", "rgb8", "grey16"]
)
def test_keeps_size_channels_and_bit_depth(tmp_path, rng, channels, dtype, bits):
    path = make_refiner(str(tmp_path / "r.safetensors"), channels=channels, bit_depth=bits)
    images = np.stack([image(rng, channels, dtype=dtype) for _ in range(5)])
    refined = RefineStage(path, batch_size=2).refine_images(images)
    assert refined.shape == images.shape
    assert refined.dtype == images.dtype
    assert (refined != images).mean() > 0.5


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_conversion_round_trip_is_exact(rng, dtype):
    # An identity refiner must give back the stored bytes, at either bit depth.
    images = np.stack([image(rng, 3, dtype=dtype) for _ in range(3)])
    np.testing.assert_array_equal(from_tensor(to_tensor(images), images), images)
    assert to_tensor(images).shape == (3, 3, 8, 8)


def test_only_ok_rows_are_refined(grey_refiner, rng):
    images = np.stack([image(rng) for _ in range(4)])
    status = np.array([OK, "undecodable_image", OK, "wrong_shape"], dtype=object)
    out = RefineStage(grey_refiner, batch_size=3)({"image": images, "status": status, "key": np.arange(4)})
    np.testing.assert_array_equal(out["image"][[1, 3]], images[[1, 3]])
    assert (out["image"][[0, 2]] != images[[0, 2]]).any()
    np.testing.assert_array_equal(out["key"], np.arange(4))


def test_pickles_by_path_and_refines_the_same(grey_refiner, rng):
    stage = RefineStage(grey_refiner, batch_size=8)
    copy = pickle.loads(pickle.dumps(stage))
    images = np.stack([image(rng) for _ in range(3)])
    np.testing.assert_array_equal(copy.refine_images(images), stage.refine_images(images))
    assert copy.info.content_hash == stage.info.content_hash


def test_refuses_a_missing_refiner_file(tmp_path):
    with pytest.raises(RefinerFileError, match="not found"):
        RefineStage(str(tmp_path / "nothing.safetensors"))


@pytest.mark.gpu
def test_cuda_fast_path_stays_within_one_level_of_cpu(grey_refiner, rng):
    images = np.stack([image(rng) for _ in range(300)])
    cpu = RefineStage(grey_refiner, device="cpu", batch_size=128).refine_images(images)
    gpu_stage = RefineStage(grey_refiner, device="cuda", batch_size=128)
    gpu = gpu_stage.refine_images(images)
    assert gpu_stage.use_bf16 is not None  # decided on the first batch
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
    assert np.abs(gpu.astype(int) - cpu.astype(int)).max() <= 1
    assert torch.cuda.is_available()
