"""A real headless browser for the tests: Chromium from the Debian packages (`make browser`
installs it), driven through its DevTools protocol over aiohttp's websocket client, so no driver
and no browser download. One page, the commands the tests need: open, evaluate, wait, screenshot."""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)


class BrowserError(Exception):
    """The browser answered a command with an error, or did not get where it was told in time."""


class Browser:
    """Headless Chromium with one page, its profile in `profile`; `async with` starts and stops it."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self._ids = itertools.count(1)
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> Browser:
        self._process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            port = await self._port()
            self._session = aiohttp.ClientSession()
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as answer:
                targets = await answer.json()
            page = next(target for target in targets if target["type"] == "page")
            self._socket = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._session is not None:
            await self._session.close()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except asyncio.TimeoutError:
                self._process.kill()
                await self._process.wait()

    async def _port(self, timeout: float = 30.0) -> int:
        """The DevTools port Chromium chose, from the file it writes in its profile."""
        announced = self.profile / "DevToolsActivePort"
        for _ in range(int(timeout / 0.05)):
            if announced.exists() and (lines := announced.read_text().splitlines()):
                return int(lines[0])
            if self._process is not None and self._process.returncode is not None:
                raise BrowserError(f"{CHROMIUM} exited with {self._process.returncode}")
            await asyncio.sleep(0.05)
        raise BrowserError(f"{CHROMIUM} announced no DevTools port in {timeout:.0f}s")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events that arrive meanwhile are let go)."""
        assert self._socket is not None
        ident = next(self._ids)
        await self._socket.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self._socket.receive_json(timeout=60)
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return dict(message["result"])

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise awaited)."""
        found = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in found:
            raise BrowserError(f"{expression}: {found['exceptionDetails']}")
        return found["result"].get("value")

    async def until(self, expression: str, timeout: float = 15.0) -> None:
        """Wait until a JavaScript expression is true in the page."""
        for _ in range(int(timeout / 0.1)):
            if await self.evaluate(expression):
                return
            await asyncio.sleep(0.1)
        raise BrowserError(f"not true after {timeout:.0f}s: {expression}")

    async def open(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)
        await self.until(f"location.href === {url!r} && document.readyState === 'complete'")

    async def screenshot(self, path: Path, width: int = 1280) -> None:
        """The whole page as a PNG, `width` pixels wide."""
        metrics = {"width": width, "deviceScaleFactor": 1, "mobile": False}
        await self.send("Emulation.setDeviceMetricsOverride", height=800, **metrics)  # laid out at that width
        height = int(await self.evaluate("document.documentElement.scrollHeight"))
        await self.send("Emulation.setDeviceMetricsOverride", height=height, **metrics)
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
