"""Eye simulator: a procedural, UnityEyes-like grey eye image of 35x55 (H x W).

The eye is drawn analytically in numpy at twice the output resolution and averaged
down (anti-aliasing): skin with a low-frequency texture and a lid crease, an almond
opening bounded by upper and lower eyelids, shaded sclera, an iris with radial texture
and a dark limbus, the pupil, a corneal glint, lashes along the upper lid, directional
lighting, blur and sensor noise.

Gaze convention (the one MPIIGaze's normalised data uses, and the MPIIGaze and
UnityEyes importers produce): camera coordinates with x to the right of the image,
y down the image and z away from the camera, into the scene. The gaze is the unit
vector along which the eye looks, so an eye looking straight into the camera has gaze
(0, 0, -1), and

    gaze = (-cos(pitch) sin(yaw), -sin(pitch), -cos(pitch) cos(yaw))
    pitch = asin(-gaze_y),  yaw = atan2(-gaze_x, -gaze_z)

Positive pitch looks up; positive yaw looks towards the image's left (smaller column).
The iris is the disc where the gaze ray leaves the eyeball; seen by an (orthographic)
camera its centre moves by eyeball_radius * (gaze_x, gaze_y) from the eyeball centre
and it foreshortens to an ellipse whose short axis, along that shift, is
iris_radius * |gaze_z|.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

HEIGHT, WIDTH = 35, 55
SUPERSAMPLE = 2

YAW_RANGE = (-35.0, 35.0)  # degrees
PITCH_RANGE = (-25.0, 20.0)  # degrees; people look down more often than up


def gaze_vector(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Unit gaze vector in the camera convention above."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    return np.array(
        [-math.cos(pitch) * math.sin(yaw), -math.sin(pitch), -math.cos(pitch) * math.cos(yaw)]
    )


def yaw_pitch(gaze) -> tuple[float, float]:
    """(yaw, pitch) in degrees of a gaze vector (normalised first)."""
    x, y, z = np.asarray(gaze, dtype=np.float64) / np.linalg.norm(gaze)
    return math.degrees(math.atan2(-x, -z)), math.degrees(math.asin(-y))


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def sample_parameters(rng: np.random.Generator) -> dict:
    """Random scene parameters; every one of them ends up in the labels."""
    yaw = float(rng.uniform(*YAW_RANGE))
    pitch = float(rng.uniform(*PITCH_RANGE))
    eye_width = float(rng.uniform(36.0, 46.0))
    return {
        "yaw": yaw,
        "pitch": pitch,
        "eye": "right" if rng.random() < 0.5 else "left",
        "center_x": float(WIDTH / 2 + rng.uniform(-3.0, 3.0)),
        "center_y": float(HEIGHT / 2 + rng.uniform(-2.0, 2.0)),
        "eye_width": eye_width,
        "upper_lid": float(rng.uniform(0.2, 0.3) * eye_width),
        "lower_lid": float(rng.uniform(0.1, 0.17) * eye_width),
        "roll": float(rng.uniform(-6.0, 6.0)),
        "eyeball_radius": float(rng.uniform(0.38, 0.44) * eye_width),
        "iris_radius": float(rng.uniform(0.15, 0.18) * eye_width),
        "pupil_fraction": float(rng.uniform(0.3, 0.55)),
        "skin": float(rng.uniform(0.45, 0.8)),
        "sclera": float(rng.uniform(0.68, 0.92)),
        "iris": float(rng.uniform(0.12, 0.5)),
        "light_angle": float(rng.uniform(0.0, 360.0)),
        "light_strength": float(rng.uniform(0.0, 0.35)),
        "glint": float(rng.uniform(0.6, 1.0)),
        "blur": float(rng.uniform(0.2, 0.8)),
        "noise": float(rng.uniform(0.0, 0.03)),
        "texture_seed": int(rng.integers(2**31)),
    }


def render(p: dict) -> tuple[np.ndarray, dict]:
    """The 35x55 uint8 image for parameters `p`, and derived labels (iris centre, gaze)."""
    ss = SUPERSAMPLE
    ys, xs = np.mgrid[0 : HEIGHT * ss, 0 : WIDTH * ss].astype(np.float64)
    ys, xs = (ys + 0.5) / ss, (xs + 0.5) / ss  # pixel centres in output coordinates
    texture_rng = np.random.default_rng(p["texture_seed"])

    # Eye-aligned coordinates: u along the lid axis, v across it (down), after head roll.
    roll = math.radians(p["roll"])
    dx, dy = xs - p["center_x"], ys - p["center_y"]
    u = dx * math.cos(roll) + dy * math.sin(roll)
    v = -dx * math.sin(roll) + dy * math.cos(roll)
    half = p["eye_width"] / 2
    t = u / half
    # The inner corner (caruncle side, towards the nose) is pointier and lower: on the
    # image's right for a right eye seen by the camera.
    inner = t if p["eye"] == "right" else -t
    spread = np.clip(1 - t * t, 0.0, None)
    # Looking down lowers the upper lid, as real lids follow the eyeball.
    upper = p["upper_lid"] * (1 + 0.012 * p["pitch"])
    upper_v = -upper * spread ** 0.8 * (1 - 0.15 * inner)
    lower_v = p["lower_lid"] * spread ** 0.9 * (1 + 0.1 * inner) + 0.6 * inner
    opening = (v > upper_v) & (v < lower_v) & (np.abs(t) < 1)

    # Skin: smooth texture, a fold above the upper lid, darker towards the opening.
    low = zoom(texture_rng.normal(0, 1, (6, 9)), (HEIGHT * ss / 6, WIDTH * ss / 9), order=1)
    skin = p["skin"] * (1 + 0.06 * low)
    crease_v = upper_v - 0.35 * p["upper_lid"] - 1.5
    skin *= 1 - 0.18 * np.exp(-(((v - crease_v) / 1.2) ** 2)) * (np.abs(t) < 1.1)
    skin *= 1 - 0.25 * np.exp(-np.clip(v - lower_v, 0, None) / 1.5) * (v > 0) * (np.abs(t) < 1)

    # Sclera: darker towards the corners and in the upper lid's shadow.
    sclera = p["sclera"] * (1 - 0.35 * np.abs(t) ** 3) * (1 - 0.35 * np.exp(-(v - upper_v) / 2.5))

    # Iris and pupil: the gaze-driven, foreshortened disc described in the module notes.
    gaze = gaze_vector(p["yaw"], p["pitch"])
    iris_x = p["center_x"] + p["eyeball_radius"] * gaze[0]
    iris_y = p["center_y"] + p["eyeball_radius"] * gaze[1]
    shift = math.hypot(gaze[0], gaze[1])
    ax, ay = (gaze[0] / shift, gaze[1] / shift) if shift > 1e-9 else (1.0, 0.0)
    ix, iy = xs - iris_x, ys - iris_y
    along = (ix * ax + iy * ay) / (p["iris_radius"] * abs(gaze[2]))
    across = (-ix * ay + iy * ax) / p["iris_radius"]
    rho = np.sqrt(along ** 2 + across ** 2)  # 1 on the iris edge
    angle = np.arctan2(across, along)
    # Radial iris fibres: a random angular profile, tabulated once and looked up.
    table = np.linspace(-np.pi, np.pi, 513)
    profile = sum(
        0.07 * math.sin(k) * np.sin(k * table + phase)
        for k, phase in zip(range(5, 30, 4), texture_rng.uniform(0, 2 * np.pi, 7))
    )
    stripes = np.interp(angle, table, profile)
    iris = p["iris"] * (1 + stripes) * (1 - 0.55 * _smoothstep(0.7, 1.0, rho))
    pupil_mix = 1 - _smoothstep(p["pupil_fraction"] - 0.06, p["pupil_fraction"] + 0.06, rho)
    iris = iris * (1 - pupil_mix) + 0.04 * pupil_mix
    iris_mix = 1 - _smoothstep(0.95, 1.05, rho)
    eyeball = sclera * (1 - iris_mix) + iris * iris_mix

    # Corneal glint: the light source's reflection, offset from the pupil towards it.
    light = math.radians(p["light_angle"])
    gx = iris_x + 0.35 * p["iris_radius"] * math.cos(light)
    gy = iris_y - 0.35 * p["iris_radius"] * math.sin(light)
    eyeball = eyeball + p["glint"] * np.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / (2 * 0.45 ** 2))

    image = np.where(opening, eyeball, skin)
    # Lashes and lid margins: dark lines along both lids, the upper one heavier.
    image *= 1 - 0.6 * np.exp(-(((v - upper_v) / 0.9) ** 2)) * (np.abs(t) < 1.02)
    image *= 1 - 0.15 * np.exp(-(((v - lower_v) / 0.7) ** 2)) * (np.abs(t) < 1.0)

    # Directional light across the whole patch (image y is down, the angle counts up).
    ramp = (dx * math.cos(light) - dy * math.sin(light)) / half
    image *= 1 + p["light_strength"] * np.clip(ramp, -1.5, 1.5)

    image = image.reshape(HEIGHT, ss, WIDTH, ss).mean(axis=(1, 3))
    image = gaussian_filter(image, p["blur"])
    image = image + texture_rng.normal(0, p["noise"], image.shape)
    pixels = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    derived = {"gaze": [round(float(c), 6) for c in gaze], "iris_x": iris_x, "iris_y": iris_y}
    return pixels, derived


def sample(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A random eye image and its labels: gaze, yaw, pitch and every scene parameter."""
    # Rounded before rendering, so the labels describe exactly the image drawn.
    params = {
        name: round(value, 4) if isinstance(value, float) else value
        for name, value in sample_parameters(rng).items()
    }
    image, derived = render(params)
    labels = dict(params)
    labels["gaze"] = derived["gaze"]
    labels["iris_x"] = round(derived["iris_x"], 3)
    labels["iris_y"] = round(derived["iris_y"], 3)
    return image, labels
