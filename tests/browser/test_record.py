"""The Record panel: record about 3 s through @record, download it, open it with PyAV, play it."""

from __future__ import annotations

from pathlib import Path

import av
from playwright.sync_api import expect

from tests.browser.conftest import PageErrors, ServerProcess, open_panel
from tests.helpers import wait_for_sync


def test_record_download_and_play(new_page, server: ServerProcess, artifacts: Path, page_errors: PageErrors) -> None:
    page = new_page("record", server.url)
    open_panel(page, "record")
    expect(page.locator("#record-list tr.empty")).to_have_count(1)
    page.click("#record-start")
    status = page.locator("#record-status")
    expect(status).to_have_attribute("data-state", "connected")
    expect(status).to_contain_text("Recording")
    # Record about 3 s of media, timed by the page's own clock since the connection came up.
    wait_for_sync(
        lambda: page.evaluate("performance.now() - demo.record.startedAt") >= 3000,
        timeout=15,
        interval=0.1,
        message="3 s of recording",
    )
    page.screenshot(path=str(artifacts / "panel-record-recording.png"), full_page=True)
    recorded_s = page.evaluate("(performance.now() - demo.record.startedAt) / 1000")
    page.click("#record-stop")
    expect(status).to_contain_text("Saved", timeout=30_000)
    row = page.locator("#record-list tr[data-recording-id]")
    expect(row).to_have_count(1)

    with page.expect_download() as download_info:
        row.get_by_role("link", name="Download").click()
    download = download_info.value
    assert download.failure() is None
    saved = artifacts / "recording.webm"
    download.save_as(saved)
    with av.open(str(saved)) as container:
        kinds = {s.type for s in container.streams}
        assert {"video", "audio"} <= kinds, kinds
        assert container.duration is not None
        duration_s = container.duration / 1_000_000
    assert abs(duration_s - recorded_s) <= 0.3 * recorded_s, (duration_s, recorded_s)

    row.get_by_role("button", name="Play").click()
    expect(page.locator("#record-player-caption")).to_contain_text("Playing")
    wait_for_sync(
        lambda: page.evaluate("document.getElementById('record-player').currentTime") > 0.3,
        timeout=15,
        interval=0.1,
        message="the recording to play in the page",
    )
    page.evaluate("document.getElementById('record-player').pause()")
    page.screenshot(path=str(artifacts / "panel-record.png"), full_page=True)

    delete = row.get_by_role("button", name="Delete")
    delete.click()  # asks first
    expect(delete).to_have_text("Really delete?")
    expect(row).to_have_count(1)
    delete.click()
    expect(page.locator("#record-list tr[data-recording-id]")).to_have_count(0)
    expect(page.locator("#record-player-caption")).to_have_text("Pick a recording to play it here")
    assert page_errors.errors == []
