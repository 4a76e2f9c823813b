"""The HTML page of a visualisation: self-contained (every image a data URI, nothing else to
load), text escaped, written atomically; and, in a real headless Chromium, every image shown and
no console error."""

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser

import pytest
import torch
from PIL import Image

from cnnlab.errors import CnnlabError
from cnnlab.visualize.pictures import heatmap, save_grid
from cnnlab.visualize.report import INDEX, Picture, render_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    maps = heatmap(torch.rand(2, 8, 8))
    return [Picture(save_grid([[torch.rand(3, 8, 8), maps[0]]], folder / "a.png",
                              captions=[["image", "map"]], cell=0.5), "first <grid> & co"),
            Picture(save_grid([[maps[1]]], folder / "b.png", cell=0.5), 'second "grid"')]


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parsed(page):
    p = Tags()
    p.feed(page)
    return p.tags


def test_page_is_self_contained(pictures):
    page = render_report("saliency", pictures, {"model": "lenet5_modern", "method": "saliency"})
    tags = parsed(page)
    images = [a for t, a in tags if t == "img"]
    assert len(images) == 2
    for attrs, picture in zip(images, pictures, strict=True):
        assert attrs["src"] == ("data:image/png;base64,"
                                + base64.b64encode(picture.path.read_bytes()).decode())
        assert (int(attrs["width"]), int(attrs["height"])) == Image.open(picture.path).size
    # nothing that points elsewhere: no links, scripts, frames, or URLs of any scheme
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    text = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]*"', "", page)
    assert not re.search(r"(https?:|file:|//|url\()", text, re.IGNORECASE)
    assert not [a for _, a in tags for k, v in a.items()
                if k in ("src", "href") and not (v or "").startswith("data:")]


def test_text_is_escaped(pictures):
    page = render_report("<b>run</b> & more", pictures,
                         {"model <x>": "a & b", "note": "<script>alert(1)</script>"},
                         intro='say "hi" <now>')
    assert "<script>" not in page and "<b>run</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<h1>&lt;b&gt;run&lt;/b&gt; &amp; more</h1>" in page
    assert "<th>model &lt;x&gt;</th><td>a &amp; b</td>" in page
    assert "<figcaption>first &lt;grid&gt; &amp; co</figcaption>" in page
    assert 'alt="second &quot;grid&quot;"' in page
    assert "<p>say &quot;hi&quot; &lt;now&gt;</p>" in page


def test_write_is_atomic_and_refuses_what_it_cannot_embed(tmp_path, pictures):
    path = write_report(tmp_path / INDEX, "t", pictures, {})
    assert path.read_text(encoding="utf-8").count("<img ") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX]
    before = path.read_bytes()
    with pytest.raises(CnnlabError, match="cannot embed '.*missing.png'"):
        write_report(path, "t", [Picture(tmp_path / "missing.png", "x")], {})
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(CnnlabError, match="is not a PNG file"):
        write_report(path, "t", [Picture(tmp_path / "fake.png", "x")], {})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.png", INDEX]


# -- a real browser ---------------------------------------------------------------------------

class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    JSON messages ended by NUL, written to its fd 3, read from its fd 4): no extra package."""

    def __init__(self, binary: str, timeout: float = 20.0) -> None:
        self.timeout, self.events, self.next_id, self.buffer = timeout, [], 0, b""
        to_child, self.send_fd = os.pipe()
        self.recv_fd, from_child = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="cnnlab-chromium-")
        # the child's fd 3 reads and fd 4 writes: a Python trampoline moves the pipes there
        # (from fds >= 10, so neither is 3 or 4 already); no preexec_fn, which threads make
        # unsafe, and no shell, whose redirections stop at fd 9 (dash)
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child, from_child)]
        os.close(to_child)
        os.close(from_child)
        move = (f"import os, sys; os.dup2({ends[0]}, 3); os.dup2({ends[1]}, 4); "
                f"os.close({ends[0]}); os.close({ends[1]}); os.execv(sys.argv[1], sys.argv[1:])")
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", move, binary, "--headless=new", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-dev-shm-usage", "--remote-debugging-pipe",
             f"--user-data-dir={self.profile}", "about:blank"],
            pass_fds=ends, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        for fd in ends:
            os.close(fd)

    def send(self, method, params=None, session=None):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.send_fd, json.dumps(message).encode() + b"\0")
        return self.next_id

    def receive(self, deadline):
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.recv_fd], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.recv_fd, 1 << 16)
            if not chunk:
                raise EOFError("Chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, session=None):
        wanted, deadline = self.send(method, params, session), time.time() + self.timeout
        while True:
            message = self.receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method, session):
        deadline = time.time() + self.timeout
        while not any(e.get("method") == method and e.get("sessionId") == session
                      for e in self.events):
            self.events.append(self.receive(deadline))

    def open(self, url):
        """Load ``url`` in a new tab; returns (the images' [complete, naturalWidth] list, the
        console errors, uncaught exceptions and failed loads logged while loading)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target,
                                                      "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        found = self.call("Runtime.evaluate", {
            "expression": "JSON.stringify(Array.from(document.images, "
                          "i => [i.complete, i.naturalWidth]))",
            "returnByValue": True}, session=session)
        images = json.loads(found["result"]["value"])
        problems = []
        for e in self.events:
            if e.get("sessionId") != session:
                continue
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in (
                    "error", "assert"):
                problems.append(" ".join(str(a.get("value")) for a in p.get("args", [])))
            elif e.get("method") == "Runtime.exceptionThrown":
                problems.append(p["exceptionDetails"].get("text", "exception"))
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                problems.append(p["entry"]["text"])
        return images, problems

    def close(self):
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.send_fd)
        os.close(self.recv_fd)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no `chromium` binary on PATH: install Debian's chromium package "
                    "(apt-get install chromium) to run the browser test")
    tools = DevTools(CHROMIUM)
    try:
        yield tools
    finally:
        tools.close()


@pytest.mark.slow
def test_page_shows_every_image_without_console_errors_in_chromium(tmp_path, pictures,
                                                                   browser):
    page = write_report(tmp_path / INDEX, "two grids", pictures, {"model": "lenet5_modern"})
    # the check can fail: a broken image, a file the policy blocks and a console error
    broken = tmp_path / "broken.html"
    broken.write_text(render_report("broken", pictures[:1], {}).replace(
        "</body>", '<img src="data:image/png;base64,AAAA"><img src="b.png">'
        "<script>console.error('boom')</script></body>"), encoding="utf-8")
    images, problems = browser.open(broken.as_uri())
    assert [w > 0 for _, w in images] == [True, False, False]
    assert any("Content Security Policy" in p for p in problems)   # b.png and the script
    images, problems = browser.open(page.as_uri())
    assert len(images) == 2 and all(done and width > 0 for done, width in images), images
    assert problems == []
