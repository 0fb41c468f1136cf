"""app.py: the browser page. Its one function on every input kind and bad file (the same numbers
as predict.py), the server's API under 8 concurrent uploads with the models loaded once, and the
page itself in headless Chromium."""

import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import app
import checkpoints
import networks
import predict
from test_bad_inputs import _dicom, _png_claiming

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# untrained models: a flat map now and then; the page shows it as it comes
pytestmark = pytest.mark.filterwarnings("ignore:.*CAMs are constant")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("app")
    for i, size in enumerate((32, 40)):
        torch.manual_seed(i)
        checkpoints.save_checkpoint(d / "models" / f"m{i}.pt",
                                    networks.build_model("resnet18", 4, weights=None),
                                    arch="resnet18", class_names=CLASSES, image_size=size,
                                    dataset={"name": "demo", "synthetic": True},
                                    temperature=1.5 if i == 0 else 1.0)
    gray = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)
    Image.fromarray(gray).save(d / "x.png")
    _dicom(d / "x.dcm", "MONOCHROME2")
    (d / "broken.png").write_bytes((d / "x.png").read_bytes()[:60])  # cut short
    (d / "notes.png").write_text("not an image")
    (d / "header_only.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    _png_claiming(d / "huge.png", 9000, 9000)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_page_function_gives_calls_pictures_and_the_probabilities_of_predict_py(files):
    p = app.Predictor([str(files / "models")], "cpu")
    assert list(p.models) == ["m0", "m1"] and not p.error
    assert "not a diagnosis" in p.banner() and "synthetic demo" in p.banner()
    for name in ("x.png", "x.dcm"):
        text, picture, table = p(str(files / name), "gradcam", app.DEFAULT_LAYER)
        assert text.startswith("**Ensemble: ") and f"`{name}`" in text
        assert "- m0: " in text and "- m1: " in text
        assert picture and Image.open(picture).size[0] > 256
        ref = predict.predict_files(p.models, predict.collect_inputs([str(files / name)]),
                                    p.device, files / "ref", "none", progress=False)
        for model in ("m0", "m1", "ensemble"):
            row = table.set_index("model").loc[model]
            assert row.sum() == pytest.approx(1, abs=1e-3)
            want = [ref[0].calls[model].probabilities[c] for c in CLASSES]
            assert row.tolist() == pytest.approx(want, abs=1e-4), (name, model)
    text, picture, _ = p(str(files / "x.png"), "none", app.DEFAULT_LAYER)
    assert picture is None and "Ensemble" in text


def test_pictures_live_in_one_scratch_folder_that_keeps_the_last_requests(files, monkeypatch):
    monkeypatch.setattr(app.Predictor, "KEEP", 2)
    p = app.Predictor([str(files / "models")], "cpu")
    scratch = p._scratch.name
    pictures = [p(str(files / "x.png"), "gradcam")[1] for _ in range(4)]
    assert all(os.path.commonpath([q, scratch]) == scratch for q in pictures)
    assert [os.path.exists(q) for q in pictures] == [False, False, True, True]
    assert len(os.listdir(scratch)) == 2  # one folder per kept request, nothing else
    p.close()
    assert not os.path.exists(scratch)


@pytest.mark.parametrize("name,reason", [
    ("broken.png", "truncated or corrupt"), ("notes.png", "not a decodable image"),
    ("header_only.dcm", "unreadable DICOM"), ("huge.png", "81,000,000 pixels")])
def test_bad_files_get_a_message_and_the_next_upload_works(files, name, reason):
    p = app.Predictor([str(files / "models")], "cpu")
    text, picture, table = p(str(files / name))
    assert text.startswith("**This file could not be read**") and reason in text
    assert picture is None and table.empty and str(files) not in text  # the name, not the path
    assert p(str(files / "x.png"))[0].startswith("**Ensemble: ")


def test_a_missing_model_folder_is_a_message_on_the_page(files, tmp_path):
    p = app.Predictor([str(tmp_path / "nowhere")], "cpu")
    assert "No trained models found" in p.banner() and "make run" in p.banner()
    text, picture, _ = p(str(files / "x.png"))
    assert "No trained models found" in text and picture is None
    assert "Upload a radiograph" in app.Predictor([str(files / "models")], "cpu")(None)[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(files):
    gr = pytest.importorskip("gradio", reason="pip install -r requirements-app.txt")
    loads = []
    real = checkpoints.load_models
    checkpoints.load_models = lambda *a, **k: loads.append(1) or real(*a, **k)
    try:
        predictor = app.Predictor([str(files / "models")], "cpu")
    finally:
        checkpoints.load_models = real
    port = _free_port()
    page = app.build_app(predictor)
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                quiet=True)
    yield f"http://127.0.0.1:{port}/", loads, gr
    page.close()


@pytest.mark.slow  # a Gradio server (4 s to import and start)
def test_eight_concurrent_api_calls_are_all_answered_with_the_models_loaded_once(server, files,
                                                                                tmp_path,
                                                                                monkeypatch):
    url, loads, _ = server
    import gradio_client.client
    from gradio_client import Client, handle_file
    # the client downloads each answer's picture through a folder it leaves behind in the
    # system's temporary folder: into tmp_path instead
    monkeypatch.setattr(gradio_client.client, "tempfile",
                        SimpleNamespace(gettempdir=lambda: str(tmp_path),
                                        TemporaryDirectory=tempfile.TemporaryDirectory))
    client = Client(url, verbose=False, download_files=tmp_path)

    def call(i):
        t = time.perf_counter()
        name = "x.png" if i % 2 else "x.dcm"
        out = client.predict(handle_file(str(files / name)), "gradcam", app.DEFAULT_LAYER,
                             api_name="/predict")
        return out, time.perf_counter() - t

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(call, range(8)))
    assert len(results) == 8
    for (text, picture, table), _ in results:
        assert text.startswith("**Ensemble: ") and picture
        probs = pd.DataFrame(table["data"], columns=table["headers"])   # the Dataframe's JSON
        assert probs["model"].tolist() == ["m0", "m1", "ensemble"]
        assert probs[CLASSES].sum(axis=1).tolist() == pytest.approx([1, 1, 1], abs=1e-3)
    assert loads == [1]  # loaded when the server started, never per request
    broken = client.predict(handle_file(str(files / "broken.png")), "gradcam",
                            app.DEFAULT_LAYER, api_name="/predict")
    assert broken[0].startswith("**This file could not be read**")
    assert client.predict(handle_file(str(files / "x.png")), "none", app.DEFAULT_LAYER,
                          api_name="/predict")[0].startswith("**Ensemble: ")


@pytest.mark.slow
def test_the_page_in_a_browser(server, files, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)
    if exe is None:
        pytest.skip("no Chromium on this machine: apt-get install chromium (.ci/run does)")
    url, _, _ = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(url, wait_until="networkidle")
        assert "not a diagnosis" in page.inner_text("#banner")
        assert "synthetic demo" in page.inner_text("#banner")
        seen = []
        for name in ("x.png", "x.dcm", "broken.png", "x.png"):
            if page.locator("#upload input[type=file]").count() == 0:  # a file is shown: clear it
                page.click("#upload button[aria-label='Clear']")
            page.locator("#upload input[type=file]").set_input_files(str(files / name))
            page.wait_for_timeout(300)
            page.click("#go")
            want = ["could not be read" if name == "broken.png" else "Ensemble:", name]
            page.wait_for_function(  # this upload's answer, not the previous one's
                "w => document.querySelector('#calls') && w.every(s => "
                "document.querySelector('#calls').innerText.includes(s))", arg=want,
                timeout=60_000)
            seen.append(page.inner_text("#calls"))
            if name != "broken.png":
                page.wait_for_selector("#picture img", timeout=30_000)
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        browser.close()
    assert seen[0].startswith("Ensemble:") and "x.png" in seen[0]
    assert "m0:" in seen[1] and "x.dcm" in seen[1]
    assert "could not be read" in seen[2] and seen[3].startswith("Ensemble:")


def test_the_profiles_finer_layers_are_offered_and_used(files):
    p = app.Predictor([str(files / "models")], "cpu")
    p.layers.update(app._profile_layers(p, None))   # demo models: the demo profile's layers
    finer = [k for k in p.layers if "demo-cpu" in k]
    assert finer and p.layers[finer[0]]["resnet18"] == "layer3"
    text, picture, _ = p(str(files / "x.png"), "gradcam", finer[0])
    assert text.startswith("**Ensemble: ") and picture
