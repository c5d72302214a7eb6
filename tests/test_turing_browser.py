"""The visual Turing test, end to end in a real headless Chromium driven by selenium."""

import json
import threading

import pytest
from click.testing import CliRunner
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from pipeline.cli import main
from pipeline.evaluation import turing
from helpers.standins import soften, write_digits

COUNT = 6


def chromium(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("turing")
    real = write_digits(root / "real", 20, seed=1, style="soft")
    refined = soften(write_digits(root / "synthetic", 20, seed=2), root / "refined", seed=3)
    return real, refined


def serve(test):
    server = turing.make_server(test, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def stop(server):
    server.shutdown()
    server.server_close()


def click(browser, element_id):
    """Click and wait until the browser has left the page (the next one has loaded)."""
    element = browser.find_element(By.ID, element_id)
    element.click()
    # While Chromium swaps documents, asking about the old element can fail with a transient
    # protocol error instead of "stale"; such errors mean "not yet", so keep polling.
    WebDriverWait(browser, 20, ignored_exceptions=(WebDriverException,)).until(
        expected_conditions.staleness_of(element))


def answer(browser, choice):
    """Click one answer button once the image has really loaded; returns the progress text."""
    progress = browser.find_element(By.ID, "progress").text
    loaded = WebDriverWait(browser, 20, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script(
            "const i = document.getElementById('sample'); return i.complete && i.naturalWidth;"))
    assert loaded == 28  # the PNG itself was served and decoded by the browser
    click(browser, choice)
    return progress


@pytest.mark.slow
def test_rater_stops_continues_and_raters_pool(folders, tmp_path):
    real, refined = folders
    answers_file = str(tmp_path / "answers.jsonl")
    test = turing.TuringTest(real, refined, answers_file, count=COUNT, seed=0)
    server, url = serve(test)
    browser = chromium(tmp_path / "profile1")
    try:
        browser.get(url + "/")
        browser.find_element(By.ID, "rater").send_keys("ann")
        click(browser, "start")
        seen = [answer(browser, "real") for _ in range(3)]
        assert seen == [f"Image {i} of {COUNT}" for i in (1, 2, 3)]
        click(browser, "stop")
        assert browser.find_element(By.ID, "done").text == "Thank you, ann"
        assert browser.find_element(By.ID, "continue")
    finally:
        browser.quit()
        stop(server)

    # A new server on the same file, as after closing the terminal: ann continues at 4.
    test = turing.TuringTest(real, refined, answers_file, count=COUNT, seed=0)
    server, url = serve(test)
    browser = chromium(tmp_path / "profile2")
    try:
        browser.get(url + "/rate?rater=ann")
        seen = [answer(browser, "refined") for _ in range(3)]
        assert seen == [f"Image {i} of {COUNT}" for i in (4, 5, 6)]
        assert browser.find_element(By.ID, "done").text == "Thank you, ann"
        cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#mine td")]
        lines = [json.loads(line) for line in open(answers_file)]
        assert len(lines) == COUNT and len({line["item"] for line in lines}) == COUNT
        assert sorted(line["truth"] for line in lines) == ["real"] * 3 + ["refined"] * 3
        mine = turing.summarise(lines)
        c = mine["confusion"]
        assert cells == [str(c["real"]["real"]), str(c["real"]["refined"]),
                         str(c["refined"]["real"]), str(c["refined"]["refined"])]
        assert f"p = {mine['p_value']:.3g}" in browser.find_element(By.CSS_SELECTOR, ".score").text

        # A stale form (an old position posted again) must not add a second answer.
        import urllib.parse
        import urllib.request

        stale = urllib.parse.urlencode({"rater": "ann", "n": 0, "answer": "refined"}).encode()
        urllib.request.urlopen(url + "/answer", data=stale).read()
        assert len(open(answers_file).readlines()) == COUNT

        # A second rater on the same server, pooled with the first.
        browser.get(url + "/")
        browser.find_element(By.ID, "rater").send_keys("bo")
        click(browser, "start")
        answer(browser, "real")
        answer(browser, "real")
        browser.get(url + "/done?rater=bo")
        pooled = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#pooled td")]
        assert sum(int(v) for v in pooled) == COUNT + 2
    finally:
        browser.quit()
        stop(server)

    summary = CliRunner().invoke(main, ["turing-test", "--answers", answers_file, "--summary"])
    assert summary.exit_code == 0, summary.output
    assert f"of {COUNT + 2} answers correct" in summary.output and "raters: ann, bo" in summary.output


def test_answers_pool_across_files_and_count_once(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    row = lambda rater, item, truth, ans: json.dumps(
        {"rater": rater, "item": item, "truth": truth, "answer": ans})
    a.write_text("\n".join([row("x", "real:s:1", "real", "real"), row("x", "real:s:1", "real", "refined"),
                            row("x", "refined:s:2", "refined", "real")]) + "\n")
    b.write_text(row("y", "real:s:1", "real", "refined") + "\n")
    summary = turing.summarise(turing.read_answers([str(a), str(b)]))
    assert summary["answers"] == 3 and summary["correct"] == 1
    assert summary["confusion"] == {"real": {"real": 1, "refined": 1}, "refined": {"real": 1, "refined": 0}}
    assert summary["raters"] == ["x", "y"]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    result = CliRunner().invoke(main, ["turing-test", "--answers", str(tmp_path / "bad.jsonl"), "--summary"])
    assert result.exit_code == 1 and "line 1 is not JSON" in result.output


def test_image_urls_do_not_reveal_the_source(folders, tmp_path):
    real, refined = folders
    test = turing.TuringTest(real, refined, str(tmp_path / "answers.jsonl"), count=COUNT, seed=0)
    server, url = serve(test)
    try:
        import urllib.request

        page = urllib.request.urlopen(url + "/rate?rater=cy").read().decode()
        assert "/image?rater=cy&amp;n=0" in page
        assert "real:" not in page and "refined:" not in page
        assert urllib.request.urlopen(url + "/image?rater=cy&n=0").read()[:4] == b"\x89PNG"
    finally:
        stop(server)
