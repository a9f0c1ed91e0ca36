"""Get the served model ready for the web app while the worker is idle.

The web app serves with OpenVINO from its cache (core.inference.openvino_backend). A version nobody has
served on this
machine yet must first be converted from PyTorch: ~8 s on a 2-core CPU, and torch (~300 MB) imported
into the web process for good. The worker, which has torch anyway, does it instead as soon as it sees a
new active version (or CHEXNET_MODEL), between jobs. The cache entries are written atomically, so a web
process converting the same model at the same moment is harmless: one of them wins.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine

from core import settings
from core.inference.artifact import WEIGHTS_FILE, ArtifactError, read_artifact
from db.engine import session_scope
from db.registry import get_active_version

log = logging.getLogger("chexnet.worker")


def served_model_dir(engine: Engine) -> Path | None:
    """The folder the web app serves: CHEXNET_MODEL when set, else the active version's (None: none)."""
    override = settings.model_override()
    if override is not None:
        return override
    with session_scope(engine, read_only=True) as session:
        active = get_active_version(session)
        return Path(active.path) if active is not None else None


def web_serves_with_openvino() -> bool:
    """Whether the web app's backend setting can pick OpenVINO, and OpenVINO is installed here."""
    from core.inference.predictor import openvino_available

    return settings.inference_backend() in ("auto", "openvino") and openvino_available()


def prepare_for_serving(model_dir: Path) -> dict:
    """Build the model's OpenVINO cache entries (converted graph, precision decision, compiled model);
    returns the backend's description (its `compiled_from` says whether anything had to be built)."""
    from core.inference.predictor import Predictor

    return Predictor(read_artifact(model_dir), backend="openvino", device="cpu").backend_info


class ServingPreparer:
    """Prepares each newly served model once per worker process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._prepared: tuple[str, int] | None = None  # (folder, mtime of its weights)

    def prepare_if_new(self) -> bool:
        """Prepare the served model when it changed since the last call; True when it did something.
        Called on every idle poll, so an unchanged model costs one query and one stat, nothing more."""
        if not web_serves_with_openvino():
            return False
        model_dir = served_model_dir(self.engine)
        if model_dir is None:
            return False
        try:
            key = (str(Path(model_dir).resolve()), (Path(model_dir) / WEIGHTS_FILE).stat().st_mtime_ns)
        except OSError:
            return False  # the web app says why it cannot serve it; nothing to prepare
        if key == self._prepared:
            return False
        self._prepared = key
        try:
            info = prepare_for_serving(model_dir)
        except ArtifactError:
            self._prepared = None  # not a readable model (yet): look again at the next poll
            return False
        except Exception:  # noqa: BLE001 - the web app can still convert it itself; never stop the worker
            log.exception("Could not prepare %s for serving with OpenVINO.", model_dir)
            return False
        log.info("Ready to serve %s with OpenVINO (%s).", model_dir, info.get("compiled_from"))
        return True
