"""tfdiffusion.results: table cells, rows inserted where they belong, the file round trip, metric targets."""

import json

from tfdiffusion import results

INFO = {"date": "2026-11-30T01:02:03Z", "cpu_model": "test CPU", "cpu_flags": ["avx2"], "python": "3.11",
        "numpy": "2", "tensorflow": "2.21", "keras": "3.15", "cores": 2, "onednn": True, "git": "abc123"}


def test_format_value_rounds_to_significant_figures():
    cells = [results.format_value(v) for v in (None, True, False, 0.0123456, 123.456, 12345.6, float("nan"), "a|b\nc")]
    assert cells == ["", "yes", "no", "0.0123", "123", "12346", "nan", "a\\|b c"]


def test_insert_row_appends_to_the_section_or_starts_a_table():
    head = ["| a | command |", "|---|---|"]
    lines = results.insert_row(["# T", ""], "## S", head, "| 1 | x |")
    assert lines == ["# T", "", "## S", ""] + head + ["| 1 | x |"]
    lines = results.insert_row(lines + ["", "## Later", "", "text"], "## S", head, "| 2 | y |")
    assert lines[4:8] == head + ["| 1 | x |", "| 2 | y |"] and lines[-1] == "text"
    other = ["| b | command |", "|---|---|"]  # other columns: a new table below the section's last one
    lines = results.insert_row(lines, "## S", other, "| 3 | z |")
    assert lines[8:12] == [""] + other + ["| 3 | z |"] and lines[12:14] == ["", "## Later"]


def test_append_row_writes_a_header_once_and_every_row(tmp_path):
    path = tmp_path / "sub" / "results.md"
    for value in (1.0, 2.5):
        results.append_row(str(path), "Speed", {"date": results.row_date(INFO), "images/s": value}, "python `x`.py",
                           INFO)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n") and text.count("# Benchmarks") == 1 and "test CPU" in text
    assert text.count("| date | images/s | command |") == 1
    assert "| 2026-11-30 01:02 | 2.5 | `python 'x'.py` |" in text and "TF 2.21, Keras 3.15, 2 cores" in text


def test_command_line_is_relative_to_the_root_and_quoted(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    command = results.command_line(str(tmp_path), [str(tmp_path / "b" / "run.py"), "--name=a b"])
    assert command == "TF_ENABLE_ONEDNN_OPTS=0 python b/run.py '--name=a b'"


def test_read_records_skips_cut_lines_and_filters_by_event(tmp_path):
    path = tmp_path / "run.jsonl"
    lines = [results.json_line({"event": "summary", "x": 1}), "log line", results.json_line({"event": "repeat"}),
             '{"event": "summ']
    path.write_text("\n".join(lines) + "\n")
    assert results.read_records(str(path), "summary") == [{"event": "summary", "x": 1}]
    assert len(results.read_records(str(path))) == 2 and json.loads(lines[0]) == {"event": "summary", "x": 1}


def test_metrics_check_their_targets():
    metrics = results.Metrics()
    metrics.add("speed", 120.0, ">= 100")
    metrics.add("time", 21.0, "<= 20 (at equal FID)", contended=True)
    metrics.ratio("ratio", {"v": 3.0, "contended": False}, {"v": 2.0, "contended": True}, "v", ">= 1.0")
    metrics.value("missing", None, "v", ">= 1")
    metrics.add("info", "text")
    assert [(m["metric"], m["met"], m["contended"]) for m in metrics] == [
        ("speed", True, False), ("time", False, True), ("ratio", True, True), ("info", None, False)]
    assert metrics[2]["value"] == 1.5
