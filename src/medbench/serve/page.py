"""The web page: choose an image, see the class probabilities as bars, the rule that decided the label (with the
threshold and where it came from) and a Grad-CAM overlay. Before an upload the page shows each model's decision
rule and no result block: no empty label, no image without a picture."""
from html import escape


def render(served: dict, title: str) -> str:
    """The page for the runs in ``served`` (name -> :class:`medbench.serve.models.Served`), under ``title``."""
    return _PAGE.replace("__MODELS__", _options(served)).replace("__TITLE__", title)


def _options(served: dict) -> str:
    return "".join(f'<option value="{escape(n)}" data-rule="{escape(s.rule())}">{escape(n)} '
                   f'({escape(str(s.card.get("dataset")))}, {len(s.predictor.classes)} classes)</option>'
                   for n, s in served.items())


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;padding:0 1em;color:#222}
.warn{background:#fff3cd;border:1px solid #e0c36c;padding:.5em .8em;border-radius:4px}
.row{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}
.bar{display:flex;align-items:center;margin:.25em 0}.bar span{width:11em;overflow:hidden;text-overflow:ellipsis}
.bar div{background:#4a7fc1;height:1.1em;margin:0 .5em}.bar.top div{background:#d9534f}
img{image-rendering:pixelated;border:1px solid #ccc}#error{color:#b00}[hidden]{display:none!important}
#applied{font-family:ui-monospace,monospace;font-size:.95em}
</style></head><body>
<h1>__TITLE__</h1>
<p class="warn"><b>Not for clinical use.</b> Research models; their outputs must not inform decisions about patients.</p>
<p><label>Model <select id="model">__MODELS__</select></label></p>
<p>Decision rule: <span id="rule"></span></p>
<p><input type="file" id="file" accept="image/*,.dcm,.dicom"></p>
<p id="status"></p><p id="error"></p>
<div class="row" id="result" hidden><div><h3>Prediction: <span id="top-label"></span></h3>
<p id="applied"></p><div id="bars"></div></div>
<div id="cam-box" hidden><h3>Grad-CAM</h3><img id="cam" alt="Grad-CAM overlay" width="224" height="224"></div></div>
<script>
const $ = id => document.getElementById(id);
const showRule = () => { const o = $("model").selectedOptions[0]; $("rule").textContent = o ? o.dataset.rule : ""; };
$("model").addEventListener("change", () => { showRule(); $("result").hidden = true; });
showRule();
$("file").addEventListener("change", async () => {
  const f = $("file").files[0]; if (!f) return;
  $("error").textContent = ""; $("status").textContent = "predicting…"; $("top-label").textContent = "";
  $("result").hidden = true;
  const body = new FormData(); body.append("file", f);
  const name = encodeURIComponent($("model").value);
  try {
    const r = await fetch(`${location.pathname.startsWith("/models/") ? "" : "models/" + name + "/"}predict?cam=true`,
                          {method: "POST", body});
    const j = await r.json();
    if (!r.ok) { $("error").textContent = j.error || r.statusText; $("status").textContent = ""; return; }
    const entries = Object.entries(j.probabilities);
    $("bars").replaceChildren(...entries.map(([c, p]) => {
      const d = document.createElement("div"); d.className = "bar" + (c === j.label ? " top" : "");
      const s = document.createElement("span"); s.textContent = c; s.title = c;
      const b = document.createElement("div"); b.style.width = (p * 250).toFixed(1) + "px";
      const v = document.createElement("em"); v.textContent = p.toFixed(3);
      d.append(s, b, v); return d; }));
    $("top-label").textContent = j.label === "" ? "(no label above 0.5)" : j.label;
    $("applied").textContent = j.decision ? j.decision.rule : "";
    $("cam-box").hidden = !j.cam; if (j.cam) $("cam").src = j.cam;
    $("result").hidden = false; $("status").textContent = `model ${j.model}`;
  } catch (e) { $("error").textContent = String(e); $("status").textContent = ""; }
});
</script></body></html>
"""
