"""A screenshot of the try-it page (GET /) parsing an utterance, served from a checkpoint: the README's picture.

    python bench/screenshot.py --checkpoint checkpoints/<joint run> "wake me up at five am this week" --out docs/try-it.png

Starts `main.py --task serve` on a free localhost port, types the utterance into the page in headless Debian
Chromium (Playwright), and writes the PNG once the answer is shown.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("text", help="the utterance to type")
    p.add_argument("--out", default="docs/try-it.png")
    args = p.parse_args()
    chromium = shutil.which("chromium")
    if not chromium:
        sys.exit("error: no chromium on PATH (apt-get install chromium)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "--task", "serve", "--checkpoint",
                               args.checkpoint, "--port", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 900, "height": 520})
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('intents')")
            page.fill("#text", args.text)
            with page.expect_response(lambda r: r.url.endswith("/parse")):
                page.click("#parse")
            page.wait_for_selector("#result:not(.hidden)")
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
