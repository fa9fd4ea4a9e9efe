"""Every rendered figure in README.md and docs/ agrees with the committed measurement it comes from
(scripts/render_figures.py renders them from docs/measurements/)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _renderer():
    spec = importlib.util.spec_from_file_location("render_figures", ROOT / "scripts" / "render_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_documents_agree_with_their_measurements():
    render = _renderer()
    stale = []
    seen = set()
    for path in render.DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        seen.update(m.group("name") for m in render.BLOCK.finditer(text))
        _, changed = render.render(text)
        stale += [f"{path.name}: {name}" for name in changed]
    assert not stale, "figures out of date (run python scripts/render_figures.py): " + "; ".join(stale)
    assert seen == set(render.RENDERERS), f"renderers without a block: {sorted(set(render.RENDERERS) - seen)}"


def test_a_changed_measurement_changes_the_document(tmp_path, monkeypatch):
    import json

    render = _renderer()
    source = json.loads((render.MEASUREMENTS / "cpu_pipeline.json").read_text())
    source["pipelined_over_serial"] = 9.87
    for name in ("cpu_pipeline.json",):
        (tmp_path / name).write_text(json.dumps(source))
    monkeypatch.setattr(render, "MEASUREMENTS", tmp_path)
    assert "**9.87x**" in render.scheduling_pipeline()


def test_prose_figures_are_values_of_the_measurements_they_cite():
    render = _renderer()
    problems = [f"{path.name}: {p}" for path in render.CITED_DOCUMENTS
                for p in render.unbacked_figures(path.read_text(encoding="utf-8"))]
    assert not problems, "figures their cited measurement does not hold:\n" + "\n".join(problems)


def test_a_figure_its_cited_measurement_lacks_is_found(tmp_path):
    import json

    render = _renderer()
    (tmp_path / "m.json").write_text(json.dumps({"speedup": 1.3871, "err": 0.00696, "share": 0.254}))
    ok = "Measured (docs/measurements/m.json): 1.39x, error 7e-3, 25.4 % of the time.\n\nNo citation: 9.99x."
    assert render.unbacked_figures(ok, tmp_path) == []
    wrong = "Measured (docs/measurements/m.json): 1.40x, error 7e-3."
    assert [p.split(" ")[0] for p in render.unbacked_figures(wrong, tmp_path)] == ["1.40"]
