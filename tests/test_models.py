import pytest
import torch

from pipeline.models import (
    DISCRIMINATOR_PRESETS, REAL, REFINED, REFINER_PRESETS, Discriminator, Refiner, discriminator_preset, refiner_preset,
)


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (1, 1, 35, 55), (2, 3, 17, 9)])
def test_refiner_keeps_size_and_channels_and_range(shape):
    refiner = Refiner(refiner_preset("digits", channels=shape[1]))
    out = refiner(torch.rand(shape))
    assert out.shape == shape
    assert out.min() >= 0 and out.max() <= 1


def test_refiner_starts_near_identity_in_input_range():
    # A tanh output compared with [0, 1] inputs would be far from the input here.
    x = torch.rand(2, 1, 16, 16) * 0.9 + 0.05
    assert (Refiner(refiner_preset("digits"))(x) - x).abs().max() < 0.05


def test_refiner_has_no_striding_or_pooling():
    refiner = Refiner(REFINER_PRESETS["eye"])
    for module in refiner.modules():
        assert not isinstance(module, (torch.nn.MaxPool2d, torch.nn.AvgPool2d))
        if isinstance(module, torch.nn.Conv2d):
            assert module.stride == (1, 1)
            if module.kernel_size != (1, 1):
                assert module.padding_mode == "replicate"


def test_paper_presets_are_the_papers():
    assert REFINER_PRESETS["eye"].kernel == 3 and REFINER_PRESETS["eye"].blocks == 4
    assert REFINER_PRESETS["hand"].kernel == 7 and REFINER_PRESETS["hand"].blocks == 10
    assert DISCRIMINATOR_PRESETS["eye"].layers[0] == ("conv", 96, 3, 2, 0)
    assert (REFINED, REAL) == (1, 0)


@pytest.mark.parametrize("name,size,map_size", [("digits", (28, 28), (7, 7)), ("eye", (35, 55), (4, 9)), ("eyes", (35, 55), (4, 9))])
def test_discriminator_outputs_a_map_of_two_class_logits(name, size, map_size):
    logits = Discriminator(discriminator_preset(name))(torch.rand(3, 1, *size))
    assert logits.shape == (3, 2, *map_size)


def test_discriminator_is_not_linear_and_logits_are_not_rectified():
    torch.manual_seed(0)
    d = Discriminator(discriminator_preset("digits"))
    a, b = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    zero = torch.zeros_like(a)
    # A D without activations would satisfy D(a + b) = D(a) + D(b) - D(0).
    assert (d(a + b) - (d(a) + d(b) - d(zero))).abs().max() > 1e-4
    # ReLU on the logits would make them all >= 0.
    assert (d(torch.rand(16, 1, 28, 28)) < 0).any()


def test_discriminator_spec_options_round_trip_and_stay_optional():
    plain = discriminator_preset("digits")
    assert plain.minibatch_kernels == 0 and plain.virtual_batch_norm is False
    spec = discriminator_preset("digits", minibatch_kernels=4, virtual_batch_norm=True)
    assert spec.to_dict()["minibatch_kernels"] == 4 and spec.to_dict()["virtual_batch_norm"] is True
    d = Discriminator(spec)
    with pytest.raises(ValueError, match="reference"):
        d(torch.rand(2, 1, 28, 28))
    assert d(torch.rand(2, 1, 28, 28), reference=torch.rand(4, 1, 28, 28)).shape == (2, 2, 7, 7)
