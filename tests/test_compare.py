"""`ledger compare`: the engines side by side in the simulator.  The same seed prints the same
table; under a partition each engine shows what its rules promise; bad arguments are refused
before anything runs; the report renders in Chromium with one series per node; a node's
explorer serves the newest report of its data folder."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from ledger.genesis import dev_genesis
from ledger.hdkeys import dev_keys
from node.compare import FAULT_END, FAULT_START, Schedule, longest_gap, run_one, value_at
from node.config import NodeConfig
from node.runtime import Node
from tests.nodeproc import run_cli

SEED = 1


@pytest.fixture(scope="module")
def partitioned() -> dict:
    """Each engine under the same partition of five nodes (a 3 | 2 cut from 8 to 14 virtual s)."""
    return {engine: run_one(engine, Schedule("partition", 5), SEED) for engine in ("solo", "pow", "bft", "pos", "raft")}


def sides(outcome) -> dict:
    return {side["side"]: side for side in outcome.sides}


def test_under_a_partition_each_engine_shows_what_its_rules_promise(partitioned):
    for outcome in partitioned.values():
        assert outcome.status == "ok", (outcome.engine, outcome.note)
        assert outcome.window == (FAULT_START, FAULT_END)
    bft = sides(partitioned["bft"])
    # Three of five is not two thirds: no side finalizes (or even commits) anything in the cut.
    assert bft["majority"]["final_growth"] == bft["minority"]["final_growth"] == 0
    assert bft["majority"]["head_growth"] == 0 and partitioned["bft"].reorgs == 0
    assert partitioned["bft"].stall_during == pytest.approx(FAULT_END - FAULT_START, abs=0.01)
    pow_sides = sides(partitioned["pow"])
    # Blocks on both sides, and the shorter branch undone after the heal.
    assert pow_sides["majority"]["head_growth"] > 0 and pow_sides["minority"]["head_growth"] > 0
    assert partitioned["pow"].reorgs >= 1 and partitioned["pow"].deepest_reorg >= 1
    pos = sides(partitioned["pos"])
    # Heads move on both sides; nothing made during the cut becomes final there.
    assert pos["majority"]["head_growth"] > 0 and pos["minority"]["head_growth"] > 0
    assert pos["majority"]["final_growth"] == pos["minority"]["final_growth"] == 0
    raft = sides(partitioned["raft"])
    # Commits on the majority side only.
    assert raft["majority"]["final_growth"] > 0 and raft["minority"]["final_growth"] == 0
    assert raft["minority"]["head_growth"] == 0


def test_a_run_replays_exactly(partitioned):
    again = run_one("raft", Schedule("partition", 5), SEED)
    first = partitioned["raft"]
    assert again.summary() == first.summary()
    assert again.final_series == first.final_series and again.latencies == first.latencies


def test_a_schedule_an_engine_cannot_model_says_why():
    outcome = run_one("raft", Schedule("byzantine", 4), SEED)
    assert outcome.status == "not applicable" and "crashes, not lies" in outcome.note
    assert outcome.final_per_s is None and not outcome.final_series


def test_the_stall_and_series_helpers():
    assert longest_gap([], 8.0, 14.0) == 6.0
    assert longest_gap([9.0, 13.0], 8.0, 14.0) == 4.0
    series = [(0.0, 0), (2.0, 3), (5.0, 7)]
    assert [value_at(series, t) for t in (0.0, 1.9, 2.0, 4.0, 9.0)] == [0, 0, 3, 3, 7]


@pytest.mark.parametrize("arguments, expected", [
    (["--engines", "solo,paxos"], "unknown engine paxos"),
    (["--faults", "none,earthquake"], "unknown fault schedule earthquake"),
    (["--engines", "bft", "--nodes", "2"], "--nodes 2 for bft: it needs at least 4"),
    (["--engines", "solo", "--nodes", "4,x"], "node counts like 4 or 4,7,10,16"),
    (["--engines", "solo", "--nodes", "40"], "from 2 to 32 nodes"),
    (["--engines", "solo,solo"], "named twice"),
    (["--engines", "solo", "--faults", "partition", "--nodes", "2"], "a cut needs at least 3 nodes"),
    (["--engines", "solo", "--nodes", "\u00b2"], "node counts like 4 or 4,7,10,16"),
])
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, arguments, expected):
    out = tmp_path / "report"
    result = run_cli("compare", *arguments, "--out", str(out))
    assert result.returncode == 2, result
    assert expected in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
    assert not out.exists(), "nothing written"


def test_an_empty_out_is_refused_and_nothing_lands_in_the_current_folder(tmp_path):
    result = run_cli("compare", "--engines", "solo", "--faults", "none", "--out", "", cwd=tmp_path)
    assert result.returncode == 2 and "--out is empty" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_out_path_that_is_or_is_under_a_file_is_refused_before_anything_runs(tmp_path):
    path = tmp_path / "taken"
    path.write_text("mine")
    for out in (path, path / "inside"):
        result = run_cli("compare", "--engines", "solo", "--faults", "none", "--out", str(out))
        assert result.returncode == 2 and "is a file" in result.stderr and "Traceback" not in result.stderr
        assert "ledger compare, seed" not in result.stdout, "refused before the runs"
    assert path.read_text() == "mine"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("compare") / "out"
    first = run_cli("compare", "--engines", "solo,raft", "--faults", "none,crash", "--seed", str(SEED),
                    "--out", str(out), timeout=300)
    assert first.returncode == 0, first.stderr
    return out, first.stdout


def test_the_command_prints_the_same_table_twice_and_writes_three_files(report, tmp_path):
    out, first_stdout = report
    again = run_cli("compare", "--engines", "solo,raft", "--faults", "none,crash", "--seed", str(SEED),
                    "--out", str(tmp_path), timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.replace(str(tmp_path), "OUT") == first_stdout.replace(str(out), "OUT")
    assert "raft" in first_stdout and "crash" in first_stdout
    document = json.loads((out / "results.json").read_text())
    assert [(r["engine"], r["faults"]) for r in document["results"]] == [
        ("solo", "none"), ("solo", "crash"), ("raft", "none"), ("raft", "crash")]
    assert (out / "results.json").read_bytes() == (tmp_path / "results.json").read_bytes()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and rows[0]["engine"] == "solo" and float(rows[0]["final_per_s"]) > 0


@pytest.mark.browser
def test_the_report_renders_with_one_series_per_node(report):
    from tests.test_explorer_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    out, _ = report
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto((out / "report.html").as_uri())
            plots = page.locator("svg.heights")
            assert plots.count() == 4
            for index in range(4):
                plot = plots.nth(index)
                assert plot.locator("polyline.series").count() == int(plot.get_attribute("data-nodes"))
                faulted = plot.get_attribute("data-faults") != "none"
                assert plot.locator("rect.fault-window").count() == (1 if faulted else 0)
                assert plot.bounding_box()["width"] > 100
            assert page.locator("svg.latency polyline.series").count() == 4
            assert page.locator("table tbody tr").count() == 4
            assert not errors, errors
        finally:
            browser.close()


def test_the_explorer_serves_the_newest_report_of_its_data_folder(tmp_path):
    key = dev_keys(1)[0]
    genesis = dev_genesis(key.public_key)
    report_file = tmp_path / "compare" / "report.html"

    async def scenario():
        node = Node(NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'chain.db'}"), genesis, key)
        await node.start()
        try:
            app = create_app(node, compare_report=report_file)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node.test") as client:
                missing = await client.get("/explorer/compare")
                unlinked = (await client.get("/explorer")).text
                report_file.parent.mkdir()
                report_file.write_text("<!doctype html><title>r</title><svg class='plot'></svg>")
                present = await client.get("/explorer/compare")
                linked = (await client.get("/explorer")).text
                return missing, present, unlinked, linked
        finally:
            await node.stop()

    missing, present, unlinked, linked = asyncio.run(scenario())
    assert 'href="/explorer/compare"' not in unlinked, "no link to a page that is not there"
    assert 'href="/explorer/compare"' in linked, "the explorer's menu leads to the report once there is one"
    assert missing.status_code == 404 and "ledger compare" in missing.text and "No comparison yet" in missing.text
    assert str(tmp_path) not in missing.text, "a public page names no folder of the node"
    assert present.status_code == 200 and "<svg class='plot'>" in present.text
    assert "script-src" not in present.headers["content-security-policy"]


def test_several_node_counts_add_a_growth_plot_per_engine(tmp_path):
    out = tmp_path / "scale"
    result = run_cli("compare", "--engines", "solo,raft", "--faults", "none", "--nodes", "3,4", "--out", str(out),
                     timeout=300)
    assert result.returncode == 0, result.stderr
    assert "messages per final block per node, raft: x" in result.stdout
    page = (out / "report.html").read_text()
    assert page.count('<svg class="plot scale" data-figure="messages_per_block_per_node"') == 1
    plot = page.split('data-figure="messages_per_block_per_node"')[1].split("</svg>")[0]
    assert plot.count('class="series" data-engine="solo"') == 1 and plot.count('data-engine="raft"') >= 1
