"""Issue #15, part 8: eight browser sessions at once through Layer spectra and Latent directions.

Every session must see the same numbers as the others with the same settings, the server must
stay healthy (its health endpoint answers, no page shows an exception) and its memory, with its
worker processes, must stay bounded while they all run. Half the sessions ask for the spectra
with the randomised baseline (a link setting), so two different spectra jobs run side by side
with the shared ones. The figures are printed for the closing note.
"""

from __future__ import annotations

import threading
import time
import urllib.request

import psutil
from playwright.sync_api import Browser, Page, expect

SESSIONS = 8
# The server process and its job workers together; measured at about 1 GB here with MiniLM.
MAX_SERVER_RSS_MB = 4_000
SPECTRA_DONE = "Mean alpha (trusted)"
DIRECTIONS_DONE = "Effective rank"


class _PeakRss(threading.Thread):
    """Samples the summed RSS of a process and its descendants until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc, self.peak_mb, self._halt = psutil.Process(pid), 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._halt.wait(0.2)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak_mb


def _metrics(page: Page) -> dict[str, str]:
    """The page's headline numbers, label -> shown value."""
    out = {}
    for metric in page.get_by_test_id("stMetric").all():
        label = metric.get_by_test_id("stMetricLabel").inner_text().strip()
        out[label] = metric.get_by_test_id("stMetricValue").inner_text().strip()
    return out


def _all_at_once(pages: list[Page], urls: list[str], done: str) -> list[dict[str, str]]:
    """Open every session's page before waiting for any, so that they all run at the same time; then
    each one's headline numbers once its metric ``done`` is shown."""
    for page, url in zip(pages, urls):
        page.goto(url, wait_until="commit", timeout=120_000)
    shown = []
    for page in pages:
        page.bring_to_front()
        expect(page.get_by_test_id("stMetricLabel").get_by_text(done, exact=True)).to_be_visible(timeout=300_000)
        shown.append(_metrics(page))
    return shown


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as resp:
        return resp.status == 200


def test_eight_sessions_get_the_same_numbers_from_a_healthy_server(browser: Browser, app_server):
    url, proc = app_server
    sampler = _PeakRss(proc.pid)
    sampler.start()
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(SESSIONS)]
    pages = [c.new_page() for c in contexts]
    started = time.perf_counter()
    try:
        spectra = _all_at_once(pages, [f"{url}/spectra?model=builtin:minilm{'&spectra_randomize=true' if i % 2 else ''}"
                                       for i in range(SESSIONS)], SPECTRA_DONE)
        spectra_s = time.perf_counter() - started
        directions = _all_at_once(pages, [f"{url}/directions?model=builtin:minilm"] * SESSIONS, DIRECTIONS_DONE)
        total_s = time.perf_counter() - started
        assert _healthy(url)
        assert all(p.get_by_test_id("stException").count() == 0 for p in pages)
    finally:
        peak = sampler.stop()
        for c in contexts:
            c.close()
    plain, randomised = spectra[0::2], spectra[1::2]
    assert plain[0] and all(m == plain[0] for m in plain), plain
    assert randomised[0] and all(m == randomised[0] for m in randomised), randomised
    assert directions[0] and all(m == directions[0] for m in directions), directions
    print(f"\n{SESSIONS} sessions: spectra shown in all after {spectra_s:.1f} s, directions after {total_s:.1f} s; "
          f"peak RSS of the server and its workers {peak:.0f} MB; spectra {plain[0]}; directions {directions[0]}")
    assert proc.poll() is None, "the server exited"
    assert peak < MAX_SERVER_RSS_MB, f"server and workers peaked at {peak:.0f} MB"
