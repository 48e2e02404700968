"""``ftcore serve BASE --adapter NAME=PATH ...`` (issue #19 items 2 and 4): the base and two
adapters behind one endpoint, picked by the request's ``model``, each with its own chat template
(the "zh" adapter was trained with vicuna, the other with internlm2_chat), decoded in one batch
with the same greedy answers as each alone; an adapter of another base refused at start; and the
chat page in headless Chromium picking the adapter and showing its Chinese answer as real glyphs.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from helpers import run_cli
from test_chat import train_zed_adapter
from test_serve import CHROMIUM, CHROMIUM_ARGS, start_server

pytestmark = pytest.mark.slow
pytest.importorskip("starlette", reason="ftcore serve needs the serve extra: pip install 'ftcore[serve]'")
pytest.importorskip("uvicorn", reason="ftcore serve needs the serve extra: pip install 'ftcore[serve]'")
pytest.importorskip("prometheus_client", reason="ftcore serve needs the serve extra: pip install 'ftcore[serve]'")

HAN = re.compile(r"[\u4e00-\u9fff]")


def train_chinese_adapter(root: Path, model: Path) -> Path:
    """A LoRA adapter (vicuna template) that answers in Chinese as "Ling"; once per session."""
    from ftcore.data.self_cognition import self_cognition_records

    root.mkdir(parents=True, exist_ok=True)
    data = root / "ling.jsonl"
    if not data.is_file():
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self_cognition_records("Ling", 64, "zh", 0)), encoding="utf-8")
    return train_zed_adapter(root, model, data, template="vicuna")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_llama: Path, self_cognition_file: Path) -> dict[str, Path]:
    base = tmp_path_factory.getbasetemp()
    return {"zed": train_zed_adapter(base / "zed-adapter", tiny_llama, self_cognition_file), "zh": train_chinese_adapter(base / "ling-adapter", tiny_llama)}


@pytest.fixture(scope="module")
def server(tiny_llama: Path, adapters: dict[str, Path]):
    srv = start_server(str(tiny_llama), "--template", "internlm2_chat", "--max-new-tokens", "40",
                       *(a for name, path in adapters.items() for a in ("--adapter", f"{name}={path}")))
    yield srv
    srv.stop()


def test_models_lists_the_base_and_its_adapters(server, tiny_llama) -> None:
    status, body = server.request("/v1/models", key=None)
    assert status == 200
    assert [(m["id"], m.get("parent")) for m in body["data"]] == [(tiny_llama.name, None), ("zed", tiny_llama.name), ("zh", tiny_llama.name)]
    status, body = server.request("/v1/chat/completions", json.dumps({"model": "medical", "messages": [{"role": "user", "content": "hi"}]}).encode(), key=None)
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert all(name in body["error"]["message"] for name in (tiny_llama.name, "zed", "zh"))


def test_each_adapter_answers_with_its_own_template_together_as_alone(server, tiny_llama, adapters) -> None:
    from ftcore.app import installed_parts
    from ftcore.chat.generate import Sampling
    from ftcore.chat.resolve import load_chat_model

    parts = installed_parts()
    alone = {}  # each model loaded on its own, answering through transformers' generate
    for name, kwargs in ((tiny_llama.name, {"template": "internlm2_chat"}), ("zed", {"adapter": str(adapters["zed"])}), ("zh", {"adapter": str(adapters["zh"])})):
        chat = load_chat_model(parts, str(tiny_llama), warn=lambda m: None, **kwargs)
        alone[name] = chat.generation([{"role": "user", "content": "你是谁？" if name == "zh" else "Who are you?"}], Sampling(max_new_tokens=40)).run()
    assert "Zed" in alone["zed"] and "Ling" in alone["zh"] and HAN.search(alone["zh"]), alone

    names = [tiny_llama.name, "zed", "zh"] * 2
    bodies = [json.dumps({"model": n, "messages": [{"role": "user", "content": "你是谁？" if n == "zh" else "Who are you?"}], "temperature": 0}).encode() for n in names]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda b: server.request("/v1/chat/completions", b, key=None), bodies))
    for name, (status, body) in zip(names, replies):
        assert status == 200, body
        assert body["model"] == name and body["choices"][0]["message"]["content"] == alone[name], name
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        peak = re.search(r"^ftcore_peak_batch_size (\S+)$", resp.read().decode(), re.M)
    assert peak and float(peak.group(1)) >= 2  # different adapters were decoded in one batch
    assert "Traceback" not in "".join(server.lines)


def test_an_adapter_trained_on_another_base_is_refused_at_start(tmp_path, adapters) -> None:
    from ftcore.models.tiny import make_tiny_causal_lm

    other = make_tiny_causal_lm(tmp_path / "other-base", hidden=32, intermediate=64)
    proc = run_cli("serve", str(other), "--template", "internlm2_chat", "--adapter", f"zed={adapters['zed']}", "--port", "0", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    error = proc.stderr
    assert "adapter 'zed'" in error and str(adapters["zed"]) in error and "tiny-llama" in error and "other-base" in error, error
    assert "hidden_size" in error and "loading" not in proc.stdout  # refused before the server started or loaded anything


def _has_cjk_font() -> bool:
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return False
    return bool(subprocess.run([fc_list, ":lang=zh"], capture_output=True, text=True).stdout.strip())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chat_page_picks_the_adapter_and_shows_its_chinese_answer(server, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test drives Chromium with playwright (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(server.url + "/")
            page.wait_for_function("document.body.dataset.models == '3'", timeout=30_000)
            assert page.locator("#model option").all_inner_texts()[1:] == ["zed (adapter on tiny-llama)", "zh (adapter on tiny-llama)"]
            page.select_option("#model", "zh")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "40")
            page.fill("#prompt", "你是谁？")
            page.click("#send")
            page.wait_for_function("document.querySelectorAll('.stats').length == 1 && document.body.dataset.state == 'idle'", timeout=60_000)
            assert page.locator(".msg.error").count() == 0
            answer = page.locator(".msg.assistant").first
            text = answer.inner_text()
            assert "Ling" in text and HAN.search(text), text
            stats = page.locator(".stats").first.inner_text()
            assert re.search(r"^\d+ tokens · [\d.]+ tokens/s · zh$", stats), stats
            for selector in ("#model", "#messages", ".msg.user", ".msg.assistant", ".stats", "#prompt", "#send"):
                box = page.locator(selector).first.bounding_box()
                assert box and box["width"] > 0 and box["height"] > 0 and box["x"] + box["width"] <= 1280 and box["y"] >= 0, (selector, box)
            shot = page.screenshot(path=str(tmp_path / "chinese-answer.png"))
            assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
            if not _has_cjk_font():
                pytest.skip("no Chinese font installed (apt-get install fonts-noto-cjk): the glyph check cannot tell text from tofu")
            # The same characters, once as the page shows them and once as a code point no font has
            # (U+10FFFF: always the missing-glyph box): real glyphs differ in width from a row of boxes.
            chinese = "".join(HAN.findall(text))
            widths = page.evaluate("""(text) => {
                const measure = (t) => { const s = document.createElement('span'); s.textContent = t;
                    document.querySelector('.msg.assistant').appendChild(s); const w = s.getBoundingClientRect().width; s.remove(); return w; };
                return [measure(text), measure('\\u{10FFFF}'.repeat([...text].length))];
            }""", chinese)
            assert widths[0] > 0 and abs(widths[0] - widths[1]) > 1, f"Chinese text {chinese!r} is as wide as missing-glyph boxes: {widths}"
            cdp = page.context.new_cdp_session(page)
            cdp.send("DOM.enable")
            cdp.send("CSS.enable")
            root = cdp.send("DOM.getDocument")["root"]["nodeId"]
            node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": ".msg.assistant"})["nodeId"]
            fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
            assert any("CJK" in f["familyName"] or "Han" in f["familyName"] for f in fonts if f["glyphCount"] > 0), fonts
        finally:
            browser.close()
