"""Drive the chat page in a real headless Chromium (the system's, through Playwright): upload an image, ask,
wait for the streamed answer, ask again, start over.

    python tests/visualglm/browser.py URL IMAGE OUT.png     a screenshot of one conversation (docs/chat-page.png)
"""
from __future__ import annotations

import os
import shutil
import sys


def chromium_path() -> str:
    for name in (os.environ.get("PORTER_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise RuntimeError("no Chromium found: `apt-get install -y chromium` (make test does it), or set PORTER_CHROMIUM")


def converse(url: str, image: str, questions: list[str], screenshot: str | None = None,
             timeout_ms: int = 60_000) -> dict:
    """Ask ``questions`` about ``image`` on the page at ``url``; returns what the page showed."""
    from playwright.sync_api import sync_playwright

    seen = {"answers": [], "streamed": [], "model": None}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # every text the page gives an element, as it gives it: a fast server's deltas can all land between two
        # polls (the page applies each delta of a network chunk in one task), but each is still a separate write
        page.add_init_script("""(() => {
            const text = Object.getOwnPropertyDescriptor(Node.prototype, 'textContent');
            Object.defineProperty(Node.prototype, 'textContent', {
              get() { return text.get.call(this); },
              set(value) { (this.__written = this.__written || []).push(String(value).length); text.set.call(this, value); },
            });
        })()""")
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent !== 'connecting…'")
        seen["model"] = page.text_content("#model")
        page.set_input_files("#file", image)
        page.wait_for_selector("#preview:not([hidden])")
        for n, question in enumerate(questions, start=1):
            page.fill("#question", question)
            page.press("#question", "Enter")
            answer = f"#log li.assistant >> nth={n - 1}"
            page.wait_for_selector(answer)
            # lengths of the answer's text while it streams in (polled, and as each delta was written), then the final
            lengths = page.evaluate("""(n) => new Promise(resolve => {
                const seen = [];
                const poll = () => {
                  const item = document.querySelectorAll('#log li.assistant')[n - 1];
                  seen.push(item.textContent.length);
                  if (!item.classList.contains('pending')) resolve(seen.concat(item.__written || []));
                  else setTimeout(poll, 5);
                };
                poll();
            })""", n)
            seen["streamed"].append(sorted(set(lengths)))
            seen["answers"].append(page.text_content(answer))
        if screenshot:
            page.screenshot(path=screenshot)
        seen["turns_before_reset"] = page.locator("#log li").count()
        page.click("#reset")
        seen["turns_after_reset"] = page.locator("#log li").count()
        seen["errors"] = errors + [t for t in page.locator("#log li.error").all_text_contents()]
        browser.close()
    return seen


if __name__ == "__main__":
    url, image, out = sys.argv[1:4]
    print(converse(url, image, ["What's in the image?", "图片里有什么？"], screenshot=out))
