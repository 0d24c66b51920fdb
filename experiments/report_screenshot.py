"""The audit report in a real browser: headless Chromium loads report.html, every suspect card is
checked in the page's DOM, nothing outside the file may load, and a screenshot is saved.

    python -m experiments.report_screenshot [--report=PATH/report.html] [--out=report.png]
        [--cards_png=cards.png] [--json=checks.json] [--browser=chromium-headless-shell]

Without `--report` it first trains a tiny run (the embedded digits, 40% uniform flips, L2RW on
an MLP, 320 steps, about a CPU-minute) in a temporary folder and audits it with the `quick`
preset. The browser is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
no port, no extra package). It is not a dependency of the library: Debian's
`chromium-headless-shell` (or `chromium`) package, `apt-get install chromium-headless-shell`.

What is checked, in the rendered page (JavaScript in the browser, the report left unchanged):
  - every suspect card (div.suspect) is laid out (non-zero size) and has its header (position,
    index), its image and saliency map decoded (naturalWidth > 0), the rows given, predicted,
    top 3, mean weight, non-zero share, draws, min adv. eps and weight over training, each
    non-empty; the weight over training is a drawn sparkline (svg.spark with a line or a dot
    of non-zero extent) or says "no weight history in this run" / "never drawn"; the rank
    line; the nearest neighbours (figures with a decoded image and a caption each), as many as
    the report says;
  - every image on the page is decoded;
  - no element, attribute or style sheet names an external URL (src / href / srcset / poster /
    data / action / xlink:href other than data: or #anchors; CSS url() other than data:), no
    script, link, iframe, object or embed element; and the browser's own network log
    (Network.requestWillBeSent) and resource timing hold no request but the report file
    itself and data: URIs.
The exit status is 1 when a check fails; the JSON lists every check with the browser's version.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

# The DOM check, run in the page: returns a JSON-able dict.
CHECK_JS = r"""
(() => {
  const ROWS = ["given", "predicted", "top 3", "mean weight", "non-zero share", "draws",
                "min adv. eps", "weight over training"];
  const ABSENT = ["no weight history in this run", "never drawn"];
  const decoded = (img) => img.complete && img.naturalWidth > 0;
  const cards = [...document.querySelectorAll("div.suspect")];
  const capt = [...document.querySelectorAll("p.caption")].map((p) => p.textContent).join(" ");
  const m = capt.match(/its (\d+) nearest training images/);
  const wantNeighbors = m ? parseInt(m[1]) : null;
  const out = {cards: cards.length, card_problems: [], sparklines: 0, absent_trajectory: 0};
  cards.forEach((card, i) => {
    const bad = [];
    const r = card.getBoundingClientRect();
    if (!(r.width > 0 && r.height > 0)) bad.push("not laid out");
    const sh = card.querySelector(".sh");
    if (!sh || !/#\d+ · index \d+/.test(sh.textContent)) bad.push("header");
    for (const alt of ["suspect", "saliency"]) {
      const img = card.querySelector(`.sx img[alt=${alt}]`);
      if (!img || !decoded(img)) bad.push(`${alt} image`);
    }
    const rows = {};
    card.querySelectorAll("table tr").forEach((tr) => {
      const td = tr.querySelectorAll("td");
      if (td.length == 2) rows[td[0].textContent.trim()] = td[1];
    });
    for (const k of ROWS) {
      if (!(k in rows) || !rows[k].textContent.trim() && !rows[k].querySelector("svg")) {
        bad.push(`row ${k}`);
      }
    }
    const traj = rows["weight over training"];
    if (traj) {
      const svg = traj.querySelector("svg.spark");
      if (svg) {
        const marks = [...svg.querySelectorAll("polyline, circle")];
        const box = svg.getBoundingClientRect();
        const drawn = marks.some((e) => e.getBBox().width > 0 || e.getBBox().height > 0);
        if (!marks.length || !drawn || !(box.width > 0 && box.height > 0)) bad.push("sparkline");
        else out.sparklines += 1;
      } else if (ABSENT.includes(traj.textContent.trim())) {
        out.absent_trajectory += 1;
      } else bad.push("weight over training");
    }
    const srs = [...card.querySelectorAll(".sr")].map((e) => e.textContent);
    if (!srs.some((t) => /^rank: .*\d/.test(t))) bad.push("ranks");
    const nn = [...card.querySelectorAll(".nn figure")];
    if (!nn.length || (wantNeighbors !== null && nn.length != wantNeighbors)) {
      bad.push("neighbours");
    }
    nn.forEach((f, j) => {
      const img = f.querySelector("img");
      if (!img || !decoded(img) || !f.querySelector("figcaption").textContent.trim()) {
        bad.push(`neighbour ${j}`);
      }
    });
    if (bad.length) out.card_problems.push({card: i + 1, missing: bad});
  });
  const imgs = [...document.images];
  out.images = imgs.length;
  out.undecoded_images = imgs.filter((im) => !decoded(im)).length;
  const ATTRS = ["src", "href", "srcset", "poster", "data", "action", "xlink:href"];
  const external = [];
  for (const el of document.querySelectorAll("*")) {
    for (const a of ATTRS) {
      const v = el.getAttribute(a);
      if (v !== null && !v.startsWith("data:") && !v.startsWith("#")) {
        external.push(`<${el.tagName.toLowerCase()} ${a}="${v.slice(0, 80)}">`);
      }
    }
    const st = el.getAttribute("style");
    if (st && /url\((?!['"]?data:)/.test(st)) external.push(`style: ${st.slice(0, 80)}`);
  }
  for (const sheet of document.styleSheets) {
    if (sheet.href) {  // a sheet from a file or URL (its rules may not be readable here)
      external.push(`stylesheet ${sheet.href}`);
      continue;
    }
    for (const rule of sheet.cssRules) {
      if (/url\((?!['"]?data:)/.test(rule.cssText)) external.push(rule.cssText.slice(0, 80));
      if (rule.type == CSSRule.IMPORT_RULE) external.push(rule.cssText.slice(0, 80));
    }
  }
  out.forbidden_elements = document.querySelectorAll(
    "script, link, iframe, object, embed, base, frame").length;
  out.external_in_dom = external;
  out.resource_timing = performance.getEntriesByType("resource").map((e) => e.name)
    .filter((n) => !n.startsWith("data:"));
  out.page_height = document.documentElement.scrollHeight;
  out.title = document.title;
  return out;
})()
"""

# The first row of cards (with the section caption above), for a small picture.
CARDS_CLIP_JS = r"""
(() => {
  const cards = [...document.querySelectorAll("div.suspect")];
  if (!cards.length) return null;
  const top = cards[0].getBoundingClientRect().top;
  const row = cards.filter((c) => Math.abs(c.getBoundingClientRect().top - top) < 2);
  const rects = row.map((c) => c.getBoundingClientRect());
  const x = Math.min(...rects.map((r) => r.left)), y = Math.min(...rects.map((r) => r.top));
  const right = Math.max(...rects.map((r) => r.right));
  const bottom = Math.max(...rects.map((r) => r.bottom));
  return {x: x - 4 + scrollX, y: y - 4 + scrollY, width: right - x + 8, height: bottom - y + 8};
})()
"""


class Browser:
    """Headless Chromium on a DevTools pipe (fds 3 and 4 of the child): `call` sends a command
    and returns its result, keeping every event it reads meanwhile in `events`."""

    def __init__(self, binary: str, width: int):
        self._profile = tempfile.mkdtemp(prefix="report_screenshot_")
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        # bash puts the pipe ends on fds 3 and 4 and execs the browser (no preexec_fn:
        # Python code between fork and exec may deadlock a multithreaded parent, as JAX is).
        args = [
            "/bin/bash",  # (dash takes single-digit fds only)
            "-c",
            f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}',
            binary,
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",  # run as root in a container
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={self._profile}",
            f"--window-size={width},900",
        ]
        self.proc = subprocess.Popen(
            args,
            pass_fds=(to_child_r, from_child_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf, self._id, self.events = b"", 0, []

    def _read(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("the browser did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"the browser closed its pipe: {err}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read()
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 60.0) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._read(timeout)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 -- closing: the process is ended below either way
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)


def tiny_report(folder: str) -> str:
    """Trains the tiny L2RW run in `folder`/run and audits it (quick preset): its report.html."""
    from l2rw_jax import audit
    from l2rw_jax import config as config_lib
    from l2rw_jax import train

    c = config_lib.default_config()
    c.update(
        {
            "data": dict(
                dataset="digits",
                noise="uniform",
                noise_ratio=0.4,
                clean_per_class=5,
                batch_size=50,
                clean_batch_size=50,
            ),
            "model": {"name": "mlp", "options": {"hidden": (32,)}},
            "method": {"name": "l2rw"},
            "optim": {"learning_rate": 0.1},
            "num_steps": 320,
            "loop": dict(eval_every=320, checkpoint_every=320, log_every=40, progress_bar=False),
        }
    )
    workdir = os.path.join(folder, "run")
    train.train_and_evaluate(c, workdir)
    cfg = audit.default_config("quick")
    cfg.num_cards = 6
    audit.audit_run(workdir, cfg)
    return os.path.join(workdir, "audit", "report.html")


def check_report(report: str, browser: str, out: str, cards_png: str | None, width: int) -> dict:
    """Loads `report` in the browser, runs the checks, saves the screenshots; the summary."""
    import base64

    b = Browser(browser, width)
    try:
        version = b.call("Browser.getVersion")
        target = b.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            b.call(f"{domain}.enable", session=s)
        b.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=s,
        )
        url = "file://" + os.path.abspath(report)
        b.call("Page.navigate", {"url": url}, session=s)
        b.wait_event("Page.loadEventFired")
        dom = b.call("Runtime.evaluate", {"expression": CHECK_JS, "returnByValue": True}, s)
        if "exceptionDetails" in dom:
            raise RuntimeError(f"the check script failed: {dom['exceptionDetails']}")
        dom = dom["result"]["value"]
        requests = [
            e["params"]["request"]["url"]
            for e in b.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        errors = [
            e["params"]
            for e in b.events
            if e.get("method") in ("Runtime.exceptionThrown", "Network.loadingFailed")
        ]
        height = int(dom["page_height"])
        shot = b.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
            session=s,
        )
        with open(out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        if cards_png:
            clip = b.call(
                "Runtime.evaluate", {"expression": CARDS_CLIP_JS, "returnByValue": True}, s
            )["result"].get("value")
            if clip:
                shot = b.call(
                    "Page.captureScreenshot",
                    {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
                    session=s,
                )
                with open(cards_png, "wb") as f:
                    f.write(base64.b64decode(shot["data"]))
    finally:
        b.close()
    outside = [u for u in requests if u != url and not u.startswith("data:")]
    checks = {
        "every card has every field": dom["cards"] > 0 and not dom["card_problems"],
        "every image decoded": dom["undecoded_images"] == 0,
        "no external URL in the DOM or CSS": not dom["external_in_dom"],
        "no script/link/iframe/object/embed/base": dom["forbidden_elements"] == 0,
        "no request but the file and data: URIs": not outside and not dom["resource_timing"],
        "no page error or failed load": not errors,
    }
    return {
        "browser": version["product"],
        "user_agent": version["userAgent"],
        "report": os.path.abspath(report),
        "screenshot": os.path.abspath(out),
        "screenshot_size": [width, height],
        "dom": dom,
        "requests": {
            "the file": requests.count(url),
            "data: URIs": sum(u.startswith("data:") for u in requests),
            "outside the file": outside,
        },
        "errors": errors,
        "checks": checks,
        "passed": all(checks.values()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--report", help="report.html to check; default: a tiny run's, made here")
    p.add_argument("--out", default="report_screenshot.png", help="full-page screenshot (PNG)")
    p.add_argument("--cards_png", default=None, help="screenshot of the first row of cards")
    p.add_argument("--json", default=None, help="write the checks' summary here")
    p.add_argument("--browser", default=None, help="browser binary (default: found on PATH)")
    p.add_argument("--width", type=int, default=1100, help="page width in CSS pixels")
    a = p.parse_args(argv)
    browser = a.browser or next(
        (shutil.which(n) for n in ("chromium-headless-shell", "chromium") if shutil.which(n)),
        None,
    )
    if browser is None:
        raise SystemExit(
            "no browser found: apt-get install chromium-headless-shell (or give --browser)."
        )
    with tempfile.TemporaryDirectory() as tmp:
        report = a.report or tiny_report(tmp)
        summary = check_report(report, browser, a.out, a.cards_png, a.width)
    text = json.dumps(summary, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(json.dumps({k: summary[k] for k in ("browser", "checks", "passed")}, indent=1))
    if not summary["passed"]:
        print(json.dumps({k: summary[k] for k in ("dom", "requests", "errors")}), file=sys.stderr)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
