"""The runs behind the API: each one's predictor and model card, loaded once, and inference on one image."""
import base64
import io
import json
import re
import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from medbench.predict import Predictor
from medbench.rundir import CARD_JSON
from medbench.serve.limits import Refused

_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class Served:
    """One run behind the API: its predictor (one request at a time: Grad-CAM hooks are not thread-safe) and card."""

    def __init__(self, name: str, run_dir: Path, device: str):
        self.name, self.run_dir = name, run_dir
        self.predictor = Predictor(run_dir, device=device)
        self.lock = threading.Lock()
        self.card = self._card()

    def _card(self) -> dict:
        p = self.predictor
        path = self.run_dir / CARD_JSON
        card = {}
        if path.is_file():
            try:
                card = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                card = {}
        if not card:  # runs from before model cards: what the run itself says, without bootstrap CIs
            card = {"model": p.cfg.model, "dataset": p.spec.name, "task": p.spec.task, "classes": p.classes,
                    "metrics": {s: {k: (p.metrics.get(s) or {}).get(k) for k in ("n", "acc", "auc", "acc_ci", "auc_ci")}
                                for s in ("val", "test") if p.metrics.get(s)},
                    "not_for_clinical_use": "Not for clinical use."}
        card.update(name=self.name, input_size=p.size, channels=p.channels,
                    threshold_used=p.threshold if p.task.name == "binary" else None)
        return card

    def infer(self, image, cam: bool) -> dict:
        """Class probabilities (and with ``cam`` a Grad-CAM overlay) for one uint8 ``[C, S, S]`` image."""
        p = self.predictor
        try:
            with self.lock:
                probs = p.probabilities(image[None])
                out = {"label": p.decide(probs)[0],
                       "probabilities": {c: float(x) for c, x in zip(p.classes, probs[0])},
                       "model": self.name,
                       "threshold": p.threshold if p.task.name == "binary" else None}
                if cam:
                    out["cam"] = _png_data_url(p.cams(image[None], probs)[0])
            return out
        except MemoryError:
            raise Refused(503, "the server ran out of memory for this request; retry later",
                          {"Retry-After": "5"}) from None


def load_runs(run_dirs: Sequence[Path], device: str) -> dict[str, Served]:
    """Each run loaded once, under its folder's name (made URL-safe; repeats numbered -2, -3...)."""
    names, seen = [], {}
    for d in run_dirs:
        base = _NAME.sub("-", d.resolve().name).strip("-") or "model"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return {n: Served(n, d, device) for n, d in zip(names, run_dirs)}


def _png_data_url(rgb) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).resize((224, 224), Image.Resampling.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
