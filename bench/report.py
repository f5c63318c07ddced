"""``python -m bench.report``: write ``docs/benchmarks.md`` from ``bench/results/*.json``.

Every figure in the page comes from a results file; the prose (the page's introduction,
each benchmark's method) is in ``bench/methods/*.md``. Run after ``python -m bench``
(which calls it by itself).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.results import RESULTS_DIR, load_results

__all__ = ["render", "write_report", "main", "DOC_PATH"]

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

METHODS_DIR = Path(__file__).resolve().parent / "methods"
#: The page's prose: its introduction and each benchmark's method, one markdown file each.
INTRO = (METHODS_DIR / "intro.md").read_text(encoding="utf-8")

ORDER = ["batch", "cpu", "memory", "stream", "fairness", "scaling", "insert_one", "upload", "scaleout", "console", "drain",
         "peers", "store"]


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        v = float(value)
        if v.is_integer() and abs(v) < 1000:
            text = f"{v:.0f}"
        elif abs(v) >= 1000:
            text = f"{v:,.0f}"
        elif abs(v) >= 100:
            text = f"{v:.0f}"
        elif abs(v) >= 10:
            text = f"{v:.1f}"
        else:
            text = f"{v:.2f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip() if unit and unit not in ("", "×") else (text + ("×" if unit == "×" else ""))


def _value(metric: dict[str, Any]) -> str:
    """The metric's value; within 1 % of its target, with the decimals that tell them apart."""
    value, unit, target = metric.get("value"), metric.get("unit", ""), metric.get("target")
    if target and isinstance(value, int | float) and target["value"] and value != target["value"] \
            and abs(value - target["value"]) < 0.01 * abs(target["value"]):
        for digits in range(2, 6):
            if round(value, digits) != target["value"]:
                return f"{value:.{digits}f} {unit}".strip()
    return _fmt(value, unit)


def _target(metric: dict[str, Any]) -> str:
    target = metric.get("target")
    if not target:
        return ""
    return f"{'≥' if target['op'] == '>=' else '≤'} {_fmt(target['value'], metric.get('unit', ''))}"


def _met(metric: dict[str, Any]) -> str:
    met = metric.get("met")
    return "" if met is None else ("**met**" if met else "**missed**")


def _spread(metric: dict[str, Any]) -> str:
    spread = metric.get("spread")
    if not spread:
        return ""
    unit = metric.get("unit", "")
    if spread["n"] == 1:
        return "n=1"
    return f"{_fmt(spread['min'])} – {_fmt(spread['max'])}{'×' if unit == '×' else ''} (n={spread['n']})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _machine(results: dict[str, dict[str, Any]]) -> list[str]:
    first = next(iter(results.values()))["machine"]
    store, rabbit = first.get("store", {}), first.get("rabbitmq", {})
    store_text = store.get("kind", "?")
    if store.get("version"):
        store_text += f", reports version {store['version']}"
    if store.get("package_version"):
        store_text += f" (nx-27017 {store['package_version']})"
    libs = ", ".join(f"{k} {v}" for k, v in (first.get("libraries") or {}).items() if v)
    rows = [
        ["cores", f"{first.get('cores')} ({first.get('cpu')})"],
        ["memory", f"{first.get('memory_mb'):,} MiB" if first.get("memory_mb") else "?"],
        ["OS", first.get("os", "?")],
        ["Python", first.get("python", "?")],
        ["store", store_text],
        ["RabbitMQ", f"{rabbit.get('version', '?')} (Erlang {rabbit.get('erlang', '?')})"],
        ["libraries", libs],
    ]
    lines = ["## The machine", "", *_table(["", ""], rows), ""]
    runs = [[name, r.get("started_at", "?"), r["machine"].get("git_commit") or "?", r.get("scale", "?"),
             str(r.get("repeat", "?")), _fmt(r.get("seconds"), "s"),
             " / ".join(str(x) for x in r["machine"].get("load_average_at_start", [])[:1]
                        + r["machine"].get("load_average_at_end", [])[:1])]
            for name, r in results.items()]
    lines += ["Each results file records its own run (the load average, at start / end, shows how busy",
              "the shared machine was):", "",
              *_table(["benchmark", "started (UTC)", "commit", "scale", "repeat", "took", "load avg"], runs), ""]
    return lines


def _summary(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name in ORDER:
        r = results.get(name)
        if r is None:
            rows.append([name, "not run", "", "", ""])
            continue
        if r["status"] != "ok":
            rows.append([f"[{r['title']}](#{name})", f"{r['status']}: {r.get('error') or ''}", "", "", ""])
            continue
        for m in r["metrics"]:
            if m.get("target"):
                rows.append([f"[{r['title']}](#{name})", m["label"], _value(m), _target(m), _met(m)])
    return ["## Results against the targets", "",
            *_table(["benchmark", "figure", "median", "target", ""], rows), ""]


def _method(name: str) -> str:
    """How the benchmark measures: ``bench/methods/<name>.md``."""
    path = METHODS_DIR / f"{name}.md"
    return path.read_text(encoding="utf-8").rstrip("\n") if path.exists() else ""


def _profile(profile: dict[str, Any]) -> list[str]:
    lines = [f"Profile ({profile.get('tool')}; {profile.get('workload')}; {profile.get('samples')} samples, "
             f"{profile.get('waiting_samples', 0)} more of threads waiting left out):", ""]
    if profile.get("processes"):
        shares = ", ".join(f"{p['process']} {p['pct']:.1f} %" for p in profile["processes"])
        lines += [f"Samples by process: {shares}.", ""]
    if profile.get("libraries"):
        rows = [[p["library"], f"{p['pct']:.1f} %"] for p in profile["libraries"]]
        lines += ["By process and by where the code comes from (own samples):", "",
                  *_table(["process: code", "share"], rows), ""]
    own = [[f"`{p['function']}`", f"{p['pct']:.1f} %"] for p in profile.get("self", [])]
    total = [[f"`{p['function']}`", f"{p['pct']:.1f} %"] for p in profile.get("total", [])]
    if own:
        lines += ["Where the CPU is spent (own samples of each function):", "", *_table(["function", "share"], own), ""]
    if total:
        lines += ["The platform's and the app's functions, with what they call:", "",
                  *_table(["function", "share"], total), ""]
    return lines


def _cells(row: dict[str, Any], columns: Sequence[tuple[str, Any]]) -> list[str]:
    return [str(cell(row)) for _, cell in columns]


def _runs_table(intro: str, rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, Any]]) -> list[str]:
    """A table of raw runs: ``columns`` are (header, cell function of a run)."""
    return [intro, "", *_table([h for h, _ in columns], [_cells(r, columns) for r in rows]), ""]


def _f(key: str, unit: str = "") -> Any:
    """A cell showing ``row[key]`` formatted with ``unit``."""
    return lambda row: _fmt(row.get(key), unit)


def _store_us(run: dict[str, Any]) -> str:
    seconds, records, store = run.get("seconds") or 0, run.get("records") or 0, run.get("store_cpu_share")
    return f"{store * seconds / records * 1e6:.0f} µs" if store is not None and records else "–"


MEMORY_COLUMNS = [("file", lambda r: r.get("size_label", "?")), ("records", lambda r: f"{r.get('records') or 0:,}"),
                  ("drop to committed", _f("seconds", "s")), ("records/s", _f("records_per_s")),
                  ("RSS before", _f("rss_before_mb", "MiB")), ("peak RSS", _f("peak_rss_mb", "MiB")),
                  ("daemon CPU/record", _f("cpu_us_per_record", "µs")), ("store CPU/record", _store_us)]
TENTH_COLUMNS = [("tenth", lambda t: t["tenth"]), ("documents at its end", lambda t: f"{t['documents_at_end']:,}"),
                 ("took", _f("seconds", "s")), ("records/s", _f("records_per_s")),
                 ("store CPU/record", _f("store_cpu_us_per_record", "µs")),
                 ("daemon CPU/record", _f("daemon_cpu_us_per_record", "µs"))]
UPLOAD_COLUMNS = [("file", lambda r: f"{r.get('bytes', 0) / 1e6:,.0f} MB"), ("status", lambda r: r.get("status")),
                  ("request to 201", _f("seconds", "s")), ("rate", _f("mb_per_s", "MB/s")),
                  ("RSS before", _f("rss_before_mb", "MiB")), ("peak RSS", _f("rss_peak_mb", "MiB")),
                  ("growth", _f("rss_growth_mb", "MiB")),
                  ("anonymous RSS", lambda r: f"{_fmt(r.get('anon_before_mb'), 'MiB')} → {_fmt(r.get('anon_peak_mb'), 'MiB')}"),
                  ("samples", lambda r: r.get("rss_samples", "?"))]
TIMELINE_COLUMNS = [("at", _f("t", "s")), ("consumers", lambda t: f"{t.get('from')} → {t.get('to')}"),
                    ("reason (from the `stream.consumers.changed` event)", lambda t: t.get("reason") or "")]
LAST_EVENT_COLUMNS = [("time", lambda e: str(e.get("ts", ""))[11:23]), ("event", lambda e: e.get("event", "")),
                      ("consumers", lambda e: str(e.get("consumers") or "")),
                      ("reason or rule", lambda e: e.get("reason") or e.get("rule") or "")]


def _runner_label(runner: str | None) -> str:
    return "worker process" if runner == "process" else f"`runner = \"{runner}\"`" if runner else "?"


BATCH_COLUMNS = [("repetition", lambda r: r["k"]), ("app runs in", lambda r: _runner_label(r["runner"])),
                 ("first file: drop to committed", lambda r: _fmt(r["first_file"].get("seconds"), "s")),
                 ("first file: CPU", lambda r: _fmt(r["first_file"].get("cpu_seconds"), "s")),
                 ("records/s", lambda r: _fmt(r["load"].get("records_per_s"))),
                 ("daemon CPU/record", lambda r: _fmt(r["load"].get("daemon_cpu_us_per_record"), "µs")),
                 ("worker CPU/record", lambda r: _fmt(r["load"].get("worker_cpu_us_per_record"), "µs")),
                 ("CPU/record", lambda r: _fmt(r["load"].get("cpu_us_per_record"), "µs"))]
STREAM_COLUMNS = [("repetition", lambda r: r["k"]), ("app runs in", lambda r: _runner_label(r.get("runner"))),
                  ("publish to committed", _f("rate", "msg/s")),
                  ("daemon CPU/message", _f("daemon_cpu_us_per_message", "µs")),
                  ("worker CPU/message", _f("worker_cpu_us_per_message", "µs")),
                  ("CPU/message", _f("cpu_us_per_message", "µs"))]


def _memory_runs(runs: list[dict[str, Any]]) -> list[str]:
    """One row per load, then each sampled load tenth by tenth."""
    lines = _runs_table("Each load:", runs, MEMORY_COLUMNS)
    for run in runs:
        if run.get("tenths"):
            lines += _runs_table(
                f"The {run.get('size_label', '?')} load tenth by tenth (documents written, from the daemon's "
                f"batch.file.progress events, and CPU read every {_fmt(run.get('progress_every_s'), 's')}, "
                f"{run.get('progress_samples', '?')} samples, interpolated at each tenth):", run["tenths"], TENTH_COLUMNS)
    return lines


def _scaling_runs(runs: list[dict[str, Any]]) -> list[str]:
    """The consumer changes of the first step load, and the last events of a load that did not settle."""
    if not runs or not runs[0].get("timeline"):
        return []
    lines = _runs_table("The consumer changes of the first step load (seconds from its first message):",
                        runs[0]["timeline"], TIMELINE_COLUMNS)
    for k, run in enumerate(runs, 1):
        if run.get("back_to_min_after_load_s") is None and run.get("monitor_last_events"):
            lines += _runs_table(f"Step load {k} did not return to `min_consumers`; the tenant's last monitor and "
                                 "consumer-change events (UTC):", run["monitor_last_events"], LAST_EVENT_COLUMNS)
    return lines


def _paired(runs: list[dict[str, Any]], keys: dict[str, str]) -> list[dict[str, Any]]:
    """Each repetition's runs of both runners (``keys``: runner -> key in the run), numbered."""
    return [{**run[key], "k": k, "runner": run[key].get("runner", runner)}
            for k, run in enumerate(runs, 1) for runner, key in keys.items()]


def _batch_runner_runs(runs: list[dict[str, Any]]) -> list[str]:
    return _runs_table("Each load (CPU is user+sys of the daemon and of its app worker):",
                       _paired(runs, {"process": "process", "thread": "thread"}), BATCH_COLUMNS)


def _stream_runs(runs: list[dict[str, Any]]) -> list[str]:
    return _runs_table("Each throughput run (CPU is user+sys of the daemon and of its app workers):",
                       _paired(runs, {"process": "platform", "thread": "platform_thread"}), STREAM_COLUMNS)


def _scaleout_runs(runs: list[dict[str, Any]]) -> list[str]:
    """Each phase: its throughput, who did the work and where the CPU went (% of a core)."""
    phases = [{**r[key], "k": k} for k, r in enumerate(runs, 1) for key in ("one", "two")]

    def pct(party: str) -> Any:
        return lambda r: "–" if r["pct_of_a_core"].get(party) is None else f"{r['pct_of_a_core'][party]:.0f} %"

    share = [(party, pct(party)) for party in ("daemon", "workers", "store", "broker", "publisher", "other")]
    columns = [("repetition", lambda r: r["k"]), ("daemons", lambda r: r["daemons"]),
               ("records/s", _f("records_per_s")), ("files per instance", lambda r: ", ".join(
                   f"{i} {n}" for i, n in r["files_per_instance"].items())), *share,
               ("checks", lambda r: "ok" if r["ok"] else "**failed**")]
    return _runs_table("Each phase (CPU in % of a core over the measured time; *other*: the rest of the "
                       "machine's busy CPU):", phases, columns)


def _pct(key: str) -> Any:
    return lambda r: "–" if r.get(key) is None else f"{100 * r[key]:.0f} %"


PEERS_COLUMNS = [("repetition", lambda r: r["k"]), ("turn", lambda r: r["turn"]), ("loader", lambda r: r["loader"]),
                 ("records/s", _f("records_per_s")), ("load", _f("seconds", "s")),
                 ("process start to end", _f("wall_seconds", "s")), ("CPU/record", _f("cpu_us_per_record", "µs")),
                 ("peak RSS", _f("peak_rss_mb", "MiB")), ("store CPU", _pct("store_cpu_share")),
                 ("store write_bytes/document", _f("store_write_bytes_per_doc", "B")),
                 ("store wchar/document", _f("store_wchar_per_doc", "B"))]


def _peers_runs(runs: list[dict[str, Any]]) -> list[str]:
    """Each load, in the order of the repetition."""
    rows = [{**run[loader], "k": k, "turn": turn} for k, run in enumerate(runs, 1)
            for turn, loader in enumerate(run.get("order", []), 1)]
    return _runs_table("Each load (CPU is the loader's own: the child process's, or the daemon's and its app "
                       "worker's; peak RSS of the child process, or the daemon's):", rows, PEERS_COLUMNS)


STORE_COLUMNS = [("repetition", lambda r: r["k"]), ("turn", lambda r: r["turn"]), ("configuration", lambda r: r["config"]),
                 ("page size on disk", _f("page_size_on_disk", "B")), ("documents/s", _f("docs_per_s")),
                 ("store CPU/document", _f("store_cpu_us_per_doc", "µs")),
                 ("write_bytes/document", _f("write_bytes_per_doc", "B")), ("wchar/document", _f("wchar_per_doc", "B")),
                 ("files/document", _f("disk_bytes_per_doc", "B")), ("query", _f("query_s", "s")),
                 ("scan", _f("scan_s", "s"))]


def _store_runs(runs: list[dict[str, Any]]) -> list[str]:
    """Each load, in the order of the repetition."""
    rows = [{**run[config], "k": k, "turn": turn} for k, run in enumerate(runs, 1)
            for turn, config in enumerate(run.get("order", []), 1)]
    return _runs_table("Each load (each in a store of its own; the reads after the clock):", rows, STORE_COLUMNS)


RUN_TABLES = {"batch": _batch_runner_runs, "peers": _peers_runs, "store": _store_runs, "cpu": _batch_runner_runs,
              "memory": _memory_runs, "scaling": _scaling_runs, "stream": _stream_runs, "scaleout": _scaleout_runs,
              "upload": lambda runs: _runs_table("Each upload:", runs, UPLOAD_COLUMNS)}


def _section(index: int, name: str, r: dict[str, Any]) -> list[str]:
    lines = [f'<a id="{name}"></a>', f"## {index}. {r['title']}", ""]
    method = _method(name)
    if method:
        lines += [method, ""]
    if r["status"] != "ok":
        return [*lines, f"**{r['status']}**: {r.get('error') or ''}", "", f"Reproduce: `{r['command']}`", ""]
    rows = [[m["label"], _value(m), _spread(m), _target(m), _met(m)] for m in r["metrics"]]
    lines += _table(["figure", "median", "min – max", "target", ""], rows)
    lines.append("")
    notes = [m for m in r["metrics"] if m.get("note")]
    for m in notes:
        lines.append(f"- {m['label']}: {m['note']}")
    for note in r.get("notes") or []:
        lines.append(f"- {note}")
    if notes or r.get("notes"):
        lines.append("")
    if name in RUN_TABLES and r.get("runs"):
        lines += RUN_TABLES[name](r["runs"])
    if r.get("profile"):
        lines += _profile(r["profile"])
    settings = r.get("settings") or {}
    if settings:
        shown = "; ".join(f"{k} = `{v}`" for k, v in settings.items())
        lines += [f"Settings: {shown}.", ""]
    reps = f"{r['repeat']} repetition{'s' if r['repeat'] != 1 else ''}"
    lines += [f"Reproduce: `{r['command']}` (scale {r['scale']}, {reps}, "
              f"took {_fmt(r.get('seconds'), 's')}); raw repetitions in `bench/results/{name}.json`.", ""]
    return lines


def render(results: dict[str, dict[str, Any]]) -> str:
    """The whole page."""
    lines = [INTRO]
    if not results:
        return "\n".join([*lines, "No results yet: run `make bench`.", ""])
    lines += _machine(results)
    lines += _summary(results)
    for index, name in enumerate(ORDER, 1):
        if name in results:
            lines += _section(index, name, results[name])
    return "\n".join(lines).rstrip() + "\n"


def write_report(results_dir: Path = RESULTS_DIR, path: Path = DOC_PATH) -> Path:
    """Render the results in ``results_dir`` into ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(load_results(results_dir)), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.report [--results-dir DIR] [--output FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--output", type=Path, default=DOC_PATH)
    args = parser.parse_args(argv)
    print(write_report(args.results_dir, args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
