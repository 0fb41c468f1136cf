"""Try the trained models on a radiograph in the browser: a small local Gradio page.

SYNOPSIS
    python app.py [--models DIR|FILE.pt ...] [--host 127.0.0.1] [--port 7860] [--device D]
    make app

DESCRIPTION
    Upload a PNG, JPEG, TIFF, BMP or DICOM chest radiograph and see each trained model's call
    and calibrated probabilities, their ensemble, and each model's Grad-CAM over the image (the
    map's peak ringed; the method and the layer can be chosen). It runs ``predict.py``'s code
    (``predict.predict_files``): the same reading, the same calibrated probabilities, the same
    Grad-CAM pictures. The models are loaded once, when the server starts; uploads are served
    one at a time from Gradio's queue, so several users can submit at once and each gets an
    answer. A file that cannot be read (broken, not an image, a DICOM without pixels, an image
    of more than 60 million pixels) gets a message on the page, and the next upload works.

    An image the models find unlike their training images (``familiarity.py``: a photograph, a
    CT or MR slice, a radiograph turned or inverted) gets no call: the page says so, shows what
    the models would say in italics and greys the probabilities. Every other image gets its
    prediction set (the classes that hold the true class 90% of the time) and its
    unfamiliarity; a copy of a training image is marked as such.

    The prediction is also an API endpoint, ``api_name="predict"``::

        from gradio_client import Client, handle_file
        Client("http://127.0.0.1:7860/").predict(handle_file("x.png"), "gradcam",
                                                   "each model's last block", api_name="/predict")

    returns ``(markdown with the calls, path of the picture or None, table of probabilities)``.

    Research use only: it is not a diagnosis, and the page says so. Models trained on the
    synthetic demo are flagged as such on the page (their checkpoints record their dataset).
    The server listens on 127.0.0.1 unless --host says otherwise; it is not built to face the
    internet.

    Needs requirements-app.txt (``make app`` installs it).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import pandas as pd

import checkpoints
import grad_cam
import predict
import runtime
from xray_io import IMAGE_EXTENSIONS

DEFAULT_LAYER = "each model's last block (the study's)"
NOT_A_DIAGNOSIS = ("**Research use only: not a diagnosis.** These models classify chest "
                   "radiographs into four classes for research and teaching; they are not a "
                   "medical device, and no clinical decision may rest on them.")


class Predictor:
    """The models, loaded once, and the one function the page and the API call. Requests run
    one at a time (Grad-CAM hooks live on the shared models). Each request's picture is written
    to its own folder inside one scratch folder (``cxr-app-*`` in the system's temporary
    folder), which holds the last ``KEEP`` requests' pictures (Gradio copies a returned picture
    into its own cache when it answers) and is removed when the process exits."""

    KEEP = 32

    def __init__(self, model_args: list[str], device: str | None = None):
        self._scratch = tempfile.TemporaryDirectory(prefix="cxr-app-")
        self._recent: collections.deque[Path] = collections.deque()
        self.device = runtime.choose_device(device)
        self.models, self.error = {}, ""
        paths = model_files(model_args)
        if not paths:
            self.error = (f"No trained models found in {' '.join(model_args)} (looked for *.pt "
                          f"checkpoints): run `make run` first, or start the app with "
                          f"`--models DIR|FILE.pt`.")
        else:
            try:
                self.models = checkpoints.load_models(paths, self.device)
            except ValueError as e:
                self.error = f"The models could not be loaded: {e}"
        self.layers: dict = {DEFAULT_LAYER: None}  # choice on the page -> cam_layer
        self.synthetic = any((m.get("dataset") or {}).get("synthetic")
                             for _, m in self.models.values())
        self._lock = threading.Lock()

    def banner(self) -> str:
        text = NOT_A_DIAGNOSIS
        if self.synthetic:
            text += ("\n\n**These models were trained on the synthetic demo dataset** "
                     "(`demo_data.py` phantoms): their calls say the pipeline works, nothing "
                     "about COVID-19.")
        if self.error:
            text += f"\n\n**{self.error}**"
        elif self.models:
            text += "\n\nModels: " + ", ".join(
                f"{n} ({m['arch']}, {m['image_size']} px)" for n, (_, m) in self.models.items())
        return text

    def __call__(self, file, cam_method: str = "gradcam", layer: str = DEFAULT_LAYER
                 ) -> tuple[str, str | None, pd.DataFrame]:
        """``(markdown, picture path or None, probabilities)`` for one uploaded file; every
        failure is a message, never an exception."""
        empty = pd.DataFrame()
        if self.error:
            return f"**{self.error}**", None, empty
        path = getattr(file, "name", file)
        if not path:
            return "Upload a radiograph (PNG, JPEG, TIFF, BMP or DICOM).", None, empty
        if cam_method not in (*grad_cam.METHODS, "none"):
            valid = ", ".join([*grad_cam.METHODS, "none"])
            return f"Unknown CAM method {cam_method!r}; valid: {valid}", None, empty
        table = pd.DataFrame({"path": [Path(path).name], "file": [str(path)], "label": [""]})
        try:
            with self._lock:
                out = self._request_folder()
                result = predict.predict_files(self.models, table, self.device, out, cam_method,
                                               self.layers.get(layer), batch_size=1,
                                               progress=False)
        except (ValueError, RuntimeError) as e:  # e.g. a layer a model lacks
            return f"Could not predict: {e}", None, empty
        pred = result[0]
        if pred.status != "ok":
            reason = pred.status.replace(str(path), Path(path).name)  # the name, not a temp path
            return (f"**This file could not be read**: {reason}\n\nUpload a PNG, JPEG, TIFF, BMP "
                    f"or DICOM radiograph.", None, empty)
        table = _probabilities(pred)
        if pred.call.out_of_distribution:  # still shown, greyed: a reference, not a result
            table = table.style.set_properties(**{"color": "#9ca3af"})
        return (_calls_markdown(pred, self.models, Path(path).name), pred.cam or None, table)

    def _request_folder(self) -> Path:
        """A new folder for one request's picture; the oldest beyond ``KEEP`` is removed."""
        out = Path(tempfile.mkdtemp(dir=self._scratch.name))
        self._recent.append(out)
        while len(self._recent) > self.KEEP:
            shutil.rmtree(self._recent.popleft(), ignore_errors=True)
        return out

    def close(self) -> None:
        """Removes the scratch folder now (it goes at exit anyway)."""
        self._scratch.cleanup()


def _calls_markdown(pred: predict.Prediction, models, name: str) -> str:
    """predict.py's ``Prediction`` of one upload as the page's text."""
    head = "Ensemble" if pred.head == "ensemble" else pred.head
    call, flagged = pred.call, bool(pred.call.out_of_distribution)
    lines = [f"**{head}: {call.predicted}** ({call.probability:.0%}), `{name}`", ""]
    if call.prediction_set:
        alpha = max(m[1].get("conformal", {}).get("alpha", 0.1) for m in models.values())
        lines += [f"**Prediction set** (holds the true class {1 - alpha:.0%} of the time on "
                  f"images like the validation split): {', '.join(call.prediction_set)}", ""]
    if flagged:
        lines = ["### Not a call: this image is unlike the radiographs the models were "
                 "trained on", "",
                 f"It may not be a chest radiograph, or it is turned, inverted, cropped, or from "
                 f"an acquisition the models never saw (unfamiliarity {call.ood_score:.2f}; "
                 f"above 1 is flagged). What the models would say is shown greyed below for "
                 f"reference; do not read it as a result.", "",
                 f"*{head} would say {call.predicted} ({call.probability:.0%}), `{name}`*", ""]
    elif call.out_of_distribution is not None:
        lines += [f"Familiar: unfamiliarity {call.ood_score:.2f} (below 1: like the training "
                  f"images)", ""]
    if pred.training_copy:
        lines[:0] = [f"**Warning: this image is a copy of one the models were trained on** "
                     f"({pred.training_copy_kind}, score {pred.training_copy_score:.3f}: "
                     f"`{pred.training_copy}`). A call on a training image is no test of "
                     f"the models.", ""]
    for n in models:
        c = pred.calls[n]
        t = models[n][1].get("temperature")
        text = (f"{n}: {c.predicted} ({c.probability:.0%})"
                + ("" if t is not None else " (uncalibrated: no temperature in the checkpoint)"))
        lines.append(f"- *{text}*" if flagged else f"- {text}")
    return "\n".join(lines)


def _probabilities(pred: predict.Prediction) -> pd.DataFrame:
    """Each call's probabilities (the models', then the ensemble's), rounded for the page."""
    classes = list(pred.call.probabilities)
    return pd.DataFrame({"model": list(pred.calls),
                         **{c: [round(call.probabilities[c], 4) for call in pred.calls.values()]
                            for c in classes}})


def model_files(args: list[str]) -> list[str]:
    """Checkpoints named by ``args`` (files, or folders of ``*.pt``), resumable states beside
    their best epoch left out."""
    files = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            files += sorted(str(f) for f in p.glob("*.pt"))
        elif p.is_file():
            files.append(str(p))
    return checkpoints.best_epoch_files(files, say=lambda _: None)


def build_app(predictor: Predictor):
    """The Gradio page: upload, method and layer, then the calls, the picture, the table."""
    import gradio as gr  # noqa: PLC0415  (requirements-app.txt)
    with gr.Blocks(title="Chest X-ray classifier (research use only)") as page:
        gr.Markdown("# Chest X-ray classification and Grad-CAM")
        gr.Markdown(predictor.banner(), elem_id="banner")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Radiograph (PNG, JPEG, TIFF, BMP, DICOM)",
                                 file_types=list(IMAGE_EXTENSIONS), type="filepath",
                                 elem_id="upload")
                method = gr.Dropdown([*grad_cam.METHODS, "none"], value="gradcam",
                                     label="Class activation map", elem_id="method")
                layer = gr.Dropdown(list(predictor.layers), value=DEFAULT_LAYER, label="Layer",
                                    elem_id="layer")
                go = gr.Button("Classify", variant="primary", elem_id="go")
            with gr.Column():
                calls = gr.Markdown(elem_id="calls")
                picture = gr.Image(label="The radiograph and each model's map (peak ringed)",
                                   type="filepath", elem_id="picture")
                probs = gr.Dataframe(label="Probabilities (calibrated)", elem_id="probs")
        go.click(predictor, [upload, method, layer], [calls, picture, probs], api_name="predict",
                 concurrency_limit=1)
    return page.queue(default_concurrency_limit=1, max_size=64)


def main(argv: list[str] | None = None) -> int:
    doc = __doc__.split("\nSYNOPSIS", 1)
    p = argparse.ArgumentParser(prog="app.py", description=doc[0].strip(),
                                epilog="SYNOPSIS" + doc[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["models"],
                   help="folders of checkpoints or .pt files (default: models/)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (7860)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best found)")
    p.add_argument("--profile", default=None,
                   help="profile whose Grad-CAM layers the page offers beside the study's "
                        "(default: the models' own: demo-cpu for demo models, else study)")
    a = p.parse_args(argv)
    if importlib.util.find_spec("gradio") is None:
        print("error: the app needs gradio: pip install -r requirements-app.txt (make app does)",
              file=sys.stderr)
        return 2
    predictor = Predictor(a.models, a.device)
    predictor.layers.update(_profile_layers(predictor, a.profile))
    print(predictor.banner().replace("**", ""))
    build_app(predictor).launch(server_name=a.host, server_port=a.port, show_error=True)
    return 0


def _profile_layers(predictor: Predictor, profile: str | None) -> dict:
    """The profile's per-architecture Grad-CAM layers, as one more choice on the page."""
    import config  # noqa: PLC0415
    profile = profile or (config.DEMO if predictor.synthetic else config.STUDY)
    layers = config.load_profile(profile)["evaluate"].get("cam_layers")
    return {f"the {profile} profile's (finer, for small inputs)": layers} if layers else {}


if __name__ == "__main__":
    sys.exit(main())
