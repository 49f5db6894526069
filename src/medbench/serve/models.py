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
                    threshold_used=p.threshold if p.task.name == "binary" else None, decision_rule=self.rule())
        return card

    def threshold_source(self) -> str | None:
        """Where the binary threshold came from: the run's validation-chosen (Youden) one, else the default."""
        p = self.predictor
        if p.task.name != "binary":
            return None
        youden = (p.metrics.get("threshold") or {}).get("youden") if isinstance(p.metrics, dict) else None
        if youden is not None and float(youden) == p.threshold:
            return "Youden, chosen on validation"
        return "the default" if p.threshold == 0.5 else "set for this server"

    def rule(self) -> str:
        """The decision rule in words, before any image: what a probability must pass to give which label."""
        p, names = self.predictor, self.predictor.classes
        if p.task.name == "binary":
            return (f"{names[1]} when P({names[1]}) > {p.threshold:.3f} (threshold: {self.threshold_source()}), "
                    f"otherwise {names[0]}")
        if p.task.name == "multilabel":
            return "every label whose probability is > 0.5 (none may be)"
        return "the class with the highest probability"

    def applied(self, probs, label: str) -> str:
        """The rule applied to one image's probabilities, e.g. ``P(PNEUMONIA) 0.665 ≤ threshold 0.670 (Youden,
        chosen on validation) → NORMAL``."""
        p, names = self.predictor, self.predictor.classes
        if p.task.name == "binary":
            v, t = _distinct(float(probs[1]), p.threshold)
            sign = ">" if float(probs[1]) > p.threshold else "≤"
            return f"P({names[1]}) {v} {sign} threshold {t} ({self.threshold_source()}) → {label}"
        if p.task.name == "multilabel":
            on = [f"{n} {float(x):.3f}" for n, x in zip(names, probs) if float(x) > 0.5]
            return f"labels with P > 0.5: {', '.join(on)}" if on else "no label with P > 0.5 → no label"
        return f"highest probability: P({label}) {float(max(probs)):.3f} → {label}"

    def infer(self, image, cam: bool) -> dict:
        """Class probabilities (and with ``cam`` a Grad-CAM overlay) for one uint8 ``[C, S, S]`` image."""
        p = self.predictor
        try:
            with self.lock:
                probs = p.probabilities(image[None])
                label = p.decide(probs)[0]
                out = {"label": label,
                       "probabilities": {c: float(x) for c, x in zip(p.classes, probs[0])},
                       "model": self.name,
                       "threshold": p.threshold if p.task.name == "binary" else None,
                       "decision": {"rule": self.applied(probs[0], label), "threshold_source": self.threshold_source()}}
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


def _distinct(value: float, threshold: float) -> tuple[str, str]:
    """Both numbers with 3 decimals, or as many more (up to 9) as it takes for them to read differently."""
    for digits in range(3, 10):
        a, b = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if a != b:
            break
    return a, b


def _png_data_url(rgb) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).resize((224, 224), Image.Resampling.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
