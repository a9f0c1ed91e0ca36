"""Out-of-distribution gate: does an image look like the adult frontal chest X-rays a model was trained on?

Three layers, run in this order on every image (the first that fires gives the reason):
1. Pixel checks on the decoded 8-bit grey image (resized like the model's input): almost uniform (blank),
   noise (neighbouring pixels as different as random ones), document (mostly white with sharp marks),
   and colour (Hasler & Süsstrunk colourfulness of the uploaded file, when it has colour channels). Their
   limits lie far outside what real NIH radiographs show (std >= 27, neighbour ratio <= 0.09 on the sample).
2. Orientation: a tiny MLP on an 8x8 thumbnail of the model's crop, trained on the fitting images as
   upright vs the same images rotated 90/180/270 degrees or inverted (bone dark). Self-supervised: it needs
   no other data.
3. Feature distance: Mahalanobis distance of the model's pooled DenseNet-121 features (log1p, PCA to 32
   dims, Ledoit-Wolf covariance) to the fitting images.

Calibration: the limits of 2 and 3 are conformal quantiles of out-of-fold scores (k-fold: each image
scored by a gate fitted without it, because in-sample distances understate those of new images), each
taking half of the false-flag budget (default 1%), so a new real image is flagged by either with
probability at most ~1%. The out-of-fold rate of both together is stored with the gate.

The gate is JSON (`to_dict`/`from_dict`, ~100 KB, arrays as base64) and lives in the model card under "ood".
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from core.errors import UserError
from core.imaging.preprocess import resize_shorter_side_center_crop


class CardCarrier(Protocol):
    """What `stored_gate` reads of a model (core.inference.artifact.ModelArtifact is one): the gate sits
    below inference, so it names the two members it needs instead of importing the artifact."""

    card: dict[str, Any]

    def weights_digest(self) -> str: ...

FORMAT = 1
FEATURE_TRANSFORM = "log1p"
DEFAULT_COMPONENTS = 32
DEFAULT_FALSE_FLAG_RATE = 0.01
DEFAULT_FOLDS = 5
MIN_FIT_IMAGES = 20
ORIENTATION_GRID = 8
ORIENTATION_HIDDEN = 32

# Pixel-check limits (on the model's resized square, 0..255).
MIN_STD = 8.0  # real NIH images: >= 27
MAX_NOISE_RATIO = 0.5  # mean |neighbour difference| / std: NIH <= 0.09, white noise ~1.13, text ~0.35
DOCUMENT_WHITE_FRACTION = 0.5  # share of pixels >= 235 ...
DOCUMENT_EDGE_RATIO = 0.2  # ... together with sharp edges (NIH <= 0.09)
MAX_COLOURFULNESS = 20.0  # Hasler & Süsstrunk: 0 grey, ~15 "slightly colourful", photos 30-100+

UNIFORM_REASON = "The image is almost uniform: it does not look like a radiograph."
NOISE_REASON = "The image looks like random noise: it does not look like a radiograph."
DOCUMENT_REASON = (
    "The image looks like a document or a drawing (mostly white with sharp dark marks), not a radiograph."
)
COLOUR_REASON = "The image is in colour: it looks like a photograph, not a radiograph."
ORIENTATION_REASON = (
    "The image looks rotated or inverted (bone dark): the model expects an upright frontal chest X-ray "
    "with bone bright."
)


class OodError(UserError, ValueError):
    """The gate cannot be fitted or read as asked (one human sentence)."""


@dataclass(frozen=True)
class OodResult:
    """`score`: the feature distance as a multiple of its limit (above 1 flagged; 0.0 without a gate)."""

    flagged: bool
    score: float
    reason: str  # a plain sentence, "" when not flagged
    check: str = ""  # which layer flagged: uniform, noise, document, colour, orientation, distance

    def to_dict(self) -> dict[str, Any]:
        """The CLI/JSON contract: {"flagged", "score", "reason"}."""
        return {"flagged": self.flagged, "score": round(float(self.score), 4), "reason": self.reason}


# --------------------------------------------------------------------------------------------------
# 1. Pixel checks


def colourfulness(data: bytes) -> float | None:
    """Hasler & Süsstrunk (2003) colourfulness of an uploaded raster file; None without colour channels.

    Call it only on bytes that `core.imaging.reader.read_xray` accepted (it has checked the size). A grey
    image
    saved as RGB (as a few NIH files are) measures 0.
    """
    import io

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("RGB", "RGBA", "RGBX", "P", "CMYK", "YCbCr", "LAB", "HSV"):
                return None
            image.draft("RGB", (256, 256))  # JPEG: decode at a reduced scale
            image.thumbnail((256, 256))
            rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a colour measure is advisory; the reader has accepted the file
        return None
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def pixel_statistics(
    pixels: np.ndarray, resize: int = 256, *, square: np.ndarray | None = None
) -> dict[str, float]:
    """What the pixel checks look at, on the square the model's input is cut from (`square`: that square
    when the caller has it, resized already, so it is not computed twice)."""
    if square is None:
        square = resize_shorter_side_center_crop(pixels, resize)
    square = square.astype(np.float32)
    std = float(square.std())
    neighbour = 0.5 * (np.abs(np.diff(square, axis=1)).mean() + np.abs(np.diff(square, axis=0)).mean())
    return {
        "std": std,
        "noise_ratio": float(neighbour / std) if std > 0 else 0.0,
        "white_fraction": float(np.mean(square >= 235)),
    }


def pixel_checks(
    pixels: np.ndarray,
    colourfulness: float | None = None,
    resize: int = 256,
    *,
    square: np.ndarray | None = None,
) -> OodResult:
    """The cheap checks alone (they need no fitted gate); score 0.0."""
    stats = pixel_statistics(pixels, resize, square=square)
    if stats["std"] < MIN_STD:
        return OodResult(True, 0.0, UNIFORM_REASON, "uniform")
    if stats["noise_ratio"] > MAX_NOISE_RATIO:
        return OodResult(True, 0.0, NOISE_REASON, "noise")
    if stats["white_fraction"] >= DOCUMENT_WHITE_FRACTION and stats["noise_ratio"] >= DOCUMENT_EDGE_RATIO:
        return OodResult(True, 0.0, DOCUMENT_REASON, "document")
    if colourfulness is not None and colourfulness > MAX_COLOURFULNESS:
        return OodResult(True, 0.0, COLOUR_REASON, "colour")
    return OodResult(False, 0.0, "")


# --------------------------------------------------------------------------------------------------
# 2. Orientation


def orientation_thumbnail(
    pixels: np.ndarray, resize: int = 256, crop: int = 224, *, square: np.ndarray | None = None
) -> np.ndarray:
    """The model's crop as an 8x8 thumbnail, standardised (brightness and contrast removed), float32."""
    if square is None:
        square = resize_shorter_side_center_crop(pixels, resize)
    offset = (resize - crop) // 2
    return _thumbnail(square[offset : offset + crop, offset : offset + crop])


def _thumbnail(crop: np.ndarray) -> np.ndarray:
    small = Image.fromarray(np.ascontiguousarray(crop)).resize(
        (ORIENTATION_GRID, ORIENTATION_GRID), Image.Resampling.BOX
    )
    values = np.asarray(small, dtype=np.float32).ravel()
    return (values - values.mean()) / (values.std() + 1e-3)


def _wrong_way_thumbnails(pixels: np.ndarray, resize: int, crop: int) -> list[np.ndarray]:
    square = resize_shorter_side_center_crop(pixels, resize)
    offset = (resize - crop) // 2
    upright = square[offset : offset + crop, offset : offset + crop]
    inverted = 255 - upright
    variants = [
        np.rot90(upright, 1),
        np.rot90(upright, 2),
        np.rot90(upright, 3),
        inverted,
        np.rot90(inverted, 2),
    ]
    return [_thumbnail(v) for v in variants]


@dataclass
class OrientationCheck:
    """P(upright) from a 64-32-1 MLP; an image is flagged when P(upright) < `limit`."""

    w1: np.ndarray  # [64, 32]
    b1: np.ndarray  # [32]
    w2: np.ndarray  # [32]
    b2: float
    limit: float = 0.5

    @classmethod
    def fit(cls, thumbnails: np.ndarray, wrong_way: np.ndarray, seed: int = 0) -> OrientationCheck:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        x = np.concatenate([thumbnails, wrong_way])
        y = np.r_[np.ones(len(thumbnails)), np.zeros(len(wrong_way))]
        # Upright images are 1 in 6: weight them up so both kinds count equally.
        weight = np.where(y == 1, len(wrong_way) / len(thumbnails), 1.0)
        mlp = MLPClassifier(
            (ORIENTATION_HIDDEN,), solver="lbfgs", alpha=1e-2, max_iter=400, random_state=seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mlp.fit(x, y, sample_weight=weight)
        return cls(
            w1=mlp.coefs_[0].astype(np.float32),
            b1=mlp.intercepts_[0].astype(np.float32),
            w2=mlp.coefs_[1][:, 0].astype(np.float32),
            b2=float(mlp.intercepts_[1][0]),
        )

    def p_upright(self, thumbnails: np.ndarray) -> np.ndarray:
        hidden = np.maximum(np.atleast_2d(thumbnails) @ self.w1 + self.b1, 0.0)
        logit = np.clip(hidden @ self.w2 + self.b2, -60, 60)
        return 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))


# --------------------------------------------------------------------------------------------------
# 3. Feature distance


@dataclass
class FeatureDistance:
    """Mahalanobis distance in a PCA subspace of log1p(pooled features), Ledoit-Wolf covariance."""

    mean: np.ndarray  # [D]
    components: np.ndarray  # [k, D], orthonormal rows
    location: np.ndarray  # [k]
    precision: np.ndarray  # [k, k]
    limit: float = math.inf

    @classmethod
    def fit(
        cls, features: np.ndarray, n_components: int = DEFAULT_COMPONENTS, seed: int = 0
    ) -> FeatureDistance:
        from sklearn.covariance import LedoitWolf
        from sklearn.decomposition import PCA

        x = np.log1p(np.asarray(features, dtype=np.float64))
        mean = x.mean(axis=0)
        k = int(min(n_components, x.shape[0] - 1, x.shape[1]))
        pca = PCA(k, random_state=seed).fit(x - mean)
        scores = pca.transform(x - mean)
        covariance = LedoitWolf().fit(scores)
        return cls(mean=mean, components=pca.components_, location=covariance.location_,
                   precision=covariance.precision_)  # fmt: skip

    def distance(self, features: np.ndarray) -> np.ndarray:
        x = np.log1p(np.maximum(np.atleast_2d(np.asarray(features, dtype=np.float64)), 0.0))
        z = (x - self.mean) @ self.components.T - self.location
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z), 0.0))


# --------------------------------------------------------------------------------------------------
# The gate


@dataclass
class OodGate:
    distance_model: FeatureDistance
    orientation: OrientationCheck
    resize: int = 256
    crop: int = 224
    info: dict[str, Any] = field(default_factory=dict)  # how it was fitted, out-of-fold rates

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        images: Sequence[np.ndarray],
        *,
        groups: Sequence[Any] | None = None,
        resize: int = 256,
        crop: int = 224,
        n_components: int = DEFAULT_COMPONENTS,
        false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE,
        folds: int = DEFAULT_FOLDS,
        seed: int = 0,
        source: dict[str, Any] | None = None,
    ) -> OodGate:
        """Fit on the pooled features [N, D] of N real images and those grey images (same order).

        `groups` (e.g. patient ids) keep one patient's images in one fold.
        """
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] != len(images):
            raise OodError("The gate needs one feature row per image.")
        n = len(images)
        if n < MIN_FIT_IMAGES:
            raise OodError(f"The gate needs at least {MIN_FIT_IMAGES} real X-rays to fit, not {n}.")
        if not 0 < false_flag_rate < 0.5:
            raise OodError("The false-flag rate must be between 0 and 0.5.")
        upright = np.stack([orientation_thumbnail(img, resize, crop) for img in images])
        wrong_way = np.stack([np.stack(_wrong_way_thumbnails(img, resize, crop)) for img in images])
        fold_of = _fold_assignment(n, groups, folds, seed)
        distance_oof = np.zeros(n)
        upright_oof = np.zeros(n)
        for fold in range(folds):
            held, kept = fold_of == fold, fold_of != fold
            if not held.any():
                continue
            distance_oof[held] = FeatureDistance.fit(features[kept], n_components, seed).distance(
                features[held]
            )
            orientation = OrientationCheck.fit(
                upright[kept], wrong_way[kept].reshape(-1, upright.shape[1]), seed
            )
            upright_oof[held] = orientation.p_upright(upright[held])
        half = false_flag_rate / 2
        distance_model = FeatureDistance.fit(features, n_components, seed)
        distance_model.limit = _conformal_upper(distance_oof, half)
        orientation = OrientationCheck.fit(upright, wrong_way.reshape(-1, upright.shape[1]), seed)
        orientation.limit = float(min(0.5, -_conformal_upper(-upright_oof, half)))
        flagged = (distance_oof > distance_model.limit) | (upright_oof < orientation.limit)
        info = {
            "method": (
                "pixel checks; orientation MLP on an 8x8 thumbnail (upright vs rotated/inverted copies "
                f"of the fitting images); Mahalanobis distance of log1p pooled DenseNet features, PCA to "
                f"{distance_model.components.shape[0]} dims, Ledoit-Wolf covariance; limits are out-of-fold "
                f"quantiles ({folds} folds), {half:.2%} of the false-flag budget each"
            ),
            "n_images": n,
            "false_flag_target": false_flag_rate,
            "out_of_fold_flag_rate": float(flagged.mean()),
            "out_of_fold_distance_flag_rate": float((distance_oof > distance_model.limit).mean()),
            "out_of_fold_orientation_flag_rate": float((upright_oof < orientation.limit).mean()),
            **(source or {}),
        }
        return cls(distance_model, orientation, resize, crop, info)

    @property
    def limit(self) -> float:
        return self.distance_model.limit

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each feature row [N, D] to the fitting images."""
        return self.distance_model.distance(features)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance as a multiple of the limit: above 1 is flagged."""
        return self.distance(features) / self.limit

    def check(
        self, pixels: np.ndarray, features: np.ndarray, colourfulness: float | None = None
    ) -> OodResult:
        """Decide for one image: its grey uint8 pixels and its pooled features [D] (or [1, D])."""
        distance = float(self.distance(features)[0])
        score = distance / self.limit
        square = resize_shorter_side_center_crop(pixels, self.resize)  # once, for both checks below
        cheap = pixel_checks(pixels, colourfulness, self.resize, square=square)
        if cheap.flagged:
            return OodResult(True, score, cheap.reason, cheap.check)
        thumbnail = orientation_thumbnail(pixels, self.resize, self.crop, square=square)
        p_upright = float(self.orientation.p_upright(thumbnail)[0])
        if p_upright < self.orientation.limit:
            return OodResult(True, score, ORIENTATION_REASON, "orientation")
        if distance > self.limit:
            reason = (
                "The image is far from the chest X-rays this model was trained on "
                f"(distance {distance:.1f}, limit {self.limit:.1f})."
            )
            return OodResult(True, score, reason, "distance")
        return OodResult(False, score, "")

    def to_dict(self) -> dict[str, Any]:
        d, o = self.distance_model, self.orientation
        return {
            "format": FORMAT,
            "input": {"resize_shorter_side": self.resize, "crop": self.crop},
            "info": self.info,
            "distance": {
                "transform": FEATURE_TRANSFORM,
                "limit": d.limit,
                "mean": _pack(d.mean, "float32"),
                # Orthonormal rows: float16 keeps the projection within ~1e-3 of float64 at half the size.
                "components": _pack(d.components, "float16"),
                "location": _pack(d.location, "float32"),
                "precision": _pack(d.precision, "float32"),
            },
            "orientation": {
                "grid": ORIENTATION_GRID,
                "limit": o.limit,
                "w1": _pack(o.w1, "float32"),
                "b1": _pack(o.b1, "float32"),
                "w2": _pack(o.w2, "float32"),
                "b2": o.b2,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OodGate:
        damaged = "The OOD gate stored in the model card is damaged or from another version; fit it again."
        try:
            if data.get("format") != FORMAT:
                raise OodError(damaged)
            d, o = data["distance"], data["orientation"]
            distance = FeatureDistance(
                mean=_unpack(d["mean"]), components=_unpack(d["components"]), location=_unpack(d["location"]),
                precision=_unpack(d["precision"]), limit=float(d["limit"]),
            )  # fmt: skip
            orientation = OrientationCheck(w1=_unpack(o["w1"]), b1=_unpack(o["b1"]), w2=_unpack(o["w2"]),
                                           b2=float(o["b2"]), limit=float(o["limit"]))  # fmt: skip
            k, dims = distance.components.shape
            shapes_fit = (
                distance.mean.shape == (dims,)
                and distance.location.shape == (k,)
                and distance.precision.shape == (k, k)
                and orientation.w1.shape == (ORIENTATION_GRID**2, orientation.b1.shape[0])
                and orientation.w2.shape == orientation.b1.shape
            )
            if not shapes_fit or int(o["grid"]) != ORIENTATION_GRID:
                raise OodError(damaged)
            spec = data.get("input") or {}
            return cls(distance, orientation, int(spec.get("resize_shorter_side", 256)),
                       int(spec.get("crop", 224)), dict(data.get("info") or {}))  # fmt: skip
        except OodError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise OodError(damaged) from exc

    @property
    def feature_dim(self) -> int:
        return int(self.distance_model.mean.shape[0])


def gate_from_card(card: dict[str, Any]) -> OodGate | None:
    """The gate stored in a model card, or None for a model without one (`python -m core ood fit`)."""
    stored = card.get("ood")
    return OodGate.from_dict(stored) if stored else None


def check_image(
    gate: OodGate | None,
    pixels: np.ndarray,
    features: np.ndarray | None,
    colourfulness: float | None = None,
    *,
    resize: int = 256,
) -> OodResult:
    """The gate's decision, or the pixel checks alone when the model has no gate (score 0.0).

    `resize`: the model's shorter-side resize, for the pixel checks without a gate (a gate has its own).
    """
    if gate is None or features is None:
        return pixel_checks(pixels, colourfulness, resize)
    return gate.check(pixels, features, colourfulness)


def _conformal_upper(values: np.ndarray, rate: float) -> float:
    """The order statistic a new exchangeable value exceeds with probability at most `rate`.

    (np.quantile interpolates below it: with ~500 images its exceedance is ~1.5x the rate asked for.)
    """
    ordered = np.sort(values)
    k = min(len(ordered), math.ceil((len(ordered) + 1) * (1 - rate)))
    return float(ordered[k - 1])


def _fold_assignment(n: int, groups: Sequence[Any] | None, folds: int, seed: int) -> np.ndarray:
    if folds < 2:
        raise OodError("Calibrating the gate needs at least 2 folds.")
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.permutation(n) % folds
    keys, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return (rng.permutation(len(keys)) % folds)[inverse]


def _pack(array: np.ndarray, dtype: str) -> dict[str, Any]:
    values = np.ascontiguousarray(np.asarray(array, dtype=dtype))
    return {
        "dtype": dtype,
        "shape": list(values.shape),
        "base64": base64.b64encode(values.tobytes()).decode(),
    }


def _unpack(packed: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(packed["base64"], validate=True)
    values = np.frombuffer(raw, dtype=np.dtype(packed["dtype"])).reshape(packed["shape"])
    return values.astype(np.float64 if values.dtype != np.float32 else np.float32)


def stored_gate(artifact: CardCarrier, weights_digest: str | None = None) -> OodGate | None:
    """The artifact's gate, or None when it has none or it was fitted for other weights.

    `weights_digest`: the artifact's, when the caller has it already (hashing the weights takes a while).
    """
    gate = gate_from_card(artifact.card)
    if gate is None:
        return None
    fitted_for = gate.info.get("weights_sha256")
    return gate if fitted_for in (None, weights_digest or artifact.weights_digest()) else None
