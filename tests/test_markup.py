"""Strings from files reach a figure as text, never as Plotly markup (charts.markup), and reach a page's
markdown as literal text (ui.guard.literal).

Every diagnostic's result is rebuilt with hostile names (tensor, matrix, model, label, run and concept names
carrying a link, an image with an onerror handler, a script, a span, formatting tags and a markdown image):
every figure the registry builds from it, once stripped, holds none of that markup, and report.html's
figures neither."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import plotly.graph_objects as go
import pytest

import reports
from charts.markup import TEMPLATE_TAGS, clean_text, strip_markup
from reports.registry import DIAGNOSTICS, figures_for
from tests import result_fixtures as results
from ui.guard import internal_error_line, literal

# Appended to every name; "{i}" keeps the names distinct.
HOSTILE = ('<a href="https://evil.example/{i}">x</a><img src=x onerror=alert(1)><b>b</b><br>'
           '<span style="color:red">s</span><script>alert(1)</script>![m](https://evil.example/m.png)\x1b[31m')
# What must not survive in a stripped figure (searched in its JSON, unescaped).
FORBIDDEN = ("<a", "href", "onerror", "<img", "<span", "<script", "\x1b")

# Keys whose string values are names a file or a user chose.
NAME_KEYS = frozenset({"name", "model_name", "model_a", "model_b", "matrix", "run_id", "label", "labels",
                       "class_names", "prompt", "held_out_classes"})


def _collect(value, key: str, found: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _collect(v, k, found)
    elif isinstance(value, list):
        for v in value:
            _collect(v, key, found)
    elif isinstance(value, str) and key in NAME_KEYS and value and value not in found:
        found[value] = value + HOSTILE.format(i=len(found))


def _rename(value, names: dict):
    """Every string (and dict key) equal to a collected name, replaced by its hostile twin."""
    if isinstance(value, dict):
        return {names.get(k, k) if isinstance(k, str) else k: _rename(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v, names) for v in value]
    if isinstance(value, str):
        return names.get(value, value)
    return value


def hostile(result):
    """``result`` with every name it holds replaced, everywhere it occurs, by a hostile one."""
    doc = result.to_dict()
    names: dict[str, str] = {}
    _collect(doc, "", names)
    # The concept's name and words, and the blocks (keys of the per-block sums).
    for key in ("concept",):
        if isinstance(doc.get(key), dict) and isinstance(doc[key].get("name"), str):
            names.setdefault(doc[key]["name"], doc[key]["name"] + HOSTILE.format(i=len(names)))
    out = DIAGNOSTICS[result.diagnostic][0].from_dict(_rename(doc, names))
    return dataclasses.replace(out, model_name=result.model_name + HOSTILE.format(i="model"))


FIXTURES = {
    "overview": results.overview,
    "spectra": results.spectra,
    "alignment": results.alignment,
    "alignment_unlabelled": results.alignment_unlabelled,
    "directions": results.directions,
    "steering": results.steering,
    "optimizer_traces": results.optimizer_traces,
    "compare": results.compare,
}


@pytest.fixture(scope="module")
def hostile_results() -> dict:
    return {name: hostile(build()) for name, build in FIXTURES.items()}


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "OUS":
            yield from _strings(value.tolist())
    elif isinstance(value, str):
        yield value


def _text(fig: go.Figure) -> str:
    """Every string of the figure (data and layout, not plotly's theme), joined, unescaped."""
    doc = fig.to_plotly_json()
    doc["layout"].pop("template", None)
    return "\n".join(_strings(doc))


# ----------------------------------------------------------------------------------------------------
# clean_text and strip_markup on hand-made figures


@pytest.mark.parametrize("text, allowed, expected", [
    ('a<a href="https://evil.example">x</a>b', "none", "axb"),
    ("a<br>b<b>c</b>", "none", "abc"),
    ("a<br>b<b>c</b><sup>2</sup>", "format", "a<br>b<b>c</b><sup>2</sup>"),
    ('<a <b>href="https://evil.example">x</a>', "none", "x"),  # no tag left behind by a removal
    ('<a <b>href="https://evil.example">x</a>', "format", 'a <b>href="https://evil.example">x'),  # text only
    ('<span style="color:red">s</span><img src=x onerror=alert(1)>', "format", "s"),
    ("<B>x</B><BR>", "format", "<B>x</B><br>"),
    ("<img src=x<br>onerror=alert(1)>n<br>v", "format", "n<br>v"),  # a tag a chart's wrapping split
    ("<img src=x<br>onerror=alert(1)>n<br>v", "none", "nv"),
    ("<b onclick=x>y</b>", "format", "y</b>"),
    ("tab\there\nline\x1b[31m\x00\u202eend", "none", "tab here line[31mend"),
    ("a < b and c > d", "none", "a < b and c > d"),
    ("&lt;a href&gt;", "none", "&lt;a href&gt;"),  # plotly shows entities as literal text
])
def test_clean_text(text, allowed, expected):
    from charts import markup

    tags = {"none": markup.NO_TAGS, "format": markup.FORMAT_TAGS}[allowed]
    assert clean_text(text, tags) == expected


def test_strip_markup_cleans_data_and_layout_but_keeps_our_formatting():
    evil = '<a href="https://evil.example">n</a><span style="x">s</span>'
    fig = go.Figure(go.Scatter(
        x=[f"t1{evil}", "t2"], y=[1.0, 2.0], text=[f"name{evil}<br>value 1", "plain"], hovertext=f"h{evil}",
        customdata=np.array([[f"c{evil}", 1], ["d", 2]], dtype=object), name=f"trace{evil}", legendgroup=f"g{evil}",
        ids=[f"i{evil}", "j"], hovertemplate="<b>%{x}</b><br>%{text}<extra></extra>",
        marker={"colorbar": {"title": {"text": f"bar<br>{evil}"}}, "color": [1, 2]},
    ))
    fig.add_trace(go.Bar(x=np.array([f"u{evil}", "v"]), y=np.array([1, 2]), texttemplate="%{y}<sup>2</sup>"))
    fig.add_trace(go.Heatmap(z=[[1, 2]], x=[f"col{evil}", "c2"], y=[f"row{evil}"]))
    fig.add_trace(go.Pie(labels=[f"slice{evil}", "b"], values=[1, 2]))
    fig.update_layout(title={"text": f"<b>Title</b> of {evil}<br><sup>sub {evil}</sup>", "subtitle": {"text": f"s{evil}"}},
                      xaxis={"title": {"text": f"x of {evil}"}, "ticktext": [f"tick{evil}"], "tickvals": [0],
                             "categoryarray": [f"t1{evil}", "t2"]},
                      legend={"title": {"text": f"legend{evil}"}})
    fig.add_annotation(text=f"note<br>{evil}", x=0, y=0)
    before = fig
    assert strip_markup(fig) is before
    text = _text(fig)
    for bad in FORBIDDEN:
        assert bad not in text, bad
    assert list(fig.data[0].x) == ["t1ns", "t2"]
    assert list(fig.data[0].text) == ["namens<br>value 1", "plain"]
    assert fig.data[0].hovertext == "hns"
    assert fig.data[0].customdata[0][0] == "cns" and fig.data[0].customdata[0][1] == 1
    assert fig.data[0].name == "tracens" and fig.data[0].legendgroup == "gns"
    assert fig.data[0].hovertemplate == "<b>%{x}</b><br>%{text}<extra></extra>"
    assert fig.data[0].marker.colorbar.title.text == "bar<br>ns"
    assert list(fig.data[1].x) == ["uns", "v"] and fig.data[1].texttemplate == "%{y}<sup>2</sup>"
    assert list(fig.data[2].x) == ["colns", "c2"] and list(fig.data[2].y) == ["rowns"]
    assert list(fig.data[3].labels) == ["slicens", "b"]
    assert fig.layout.title.text == "<b>Title</b> of ns<br><sup>sub ns</sup>"
    assert fig.layout.title.subtitle.text == "sns"
    assert fig.layout.xaxis.title.text == "x of ns"
    assert list(fig.layout.xaxis.ticktext) == ["tickns"] and list(fig.layout.xaxis.categoryarray) == ["t1ns", "t2"]
    assert fig.layout.legend.title.text == "legendns"
    assert fig.layout.annotations[0].text == "note<br>ns"


def test_strip_markup_leaves_clean_figures_and_numbers_alone():
    y = np.linspace(0, 1, 1000)
    fig = go.Figure(go.Scatter(x=np.arange(1000), y=y, name="clean", text=["a<br>b"] * 1000))
    fig.update_layout(title="<b>t</b>")
    before = fig.to_plotly_json()
    strip_markup(fig)
    assert fig.to_plotly_json() == before
    np.testing.assert_array_equal(fig.data[0].y, y)
    assert strip_markup(None) is None


# ----------------------------------------------------------------------------------------------------
# Every registered figure builder, from results with hostile names


@pytest.mark.parametrize("name", list(FIXTURES))
def test_every_figure_from_hostile_names_is_stripped(hostile_results, name):
    result = hostile_results[name]
    figures = [f for f in figures_for(result) if f is not None]
    assert figures
    reached = False
    for i, fig in enumerate(figures):
        raw = _text(fig)
        reached |= "evil.example" in raw
        strip_markup(fig)
        text = _text(fig)
        for bad in FORBIDDEN:
            assert bad not in text, f"{name} figure {i} ({fig.layout.title.text!r}) still holds {bad!r}"
        # Only the formatting tags our titles use are left anywhere (a name in a title may keep its <b>).
        for tag in re.findall(r"<[^<>]*>", text):
            assert tag.lower() in TEMPLATE_TAGS, f"{name} figure {i} still holds the tag {tag!r}"
    # The hostile names did reach the charts: the test tests something.
    assert reached, f"no hostile name reached a {name} figure"


def test_hostile_names_show_as_text_in_the_stripped_figures(hostile_results):
    """A tensor name's text survives in the data: the link's and the tags' contents, the markdown as is."""
    data = []
    for fig in figures_for(hostile_results["spectra"]):
        strip_markup(fig)
        data += [s for trace in fig.to_plotly_json()["data"] for s in _strings(trace)]
    shown = [s for s in data if "layers.0.mlp.up_proj.weight" in s]
    assert shown
    assert any(re.search(r"layers\.0\.mlp\.up_proj\.weightxb(<br>)?salert\(1\)!\[m\]\(https://evil\.example/m\.png\)",
                         s.replace("<br>", "")) for s in shown), shown[:3]


def _figure_scripts(page: str) -> list[str]:
    """The <script> bodies that draw a figure (not plotly.js itself)."""
    return [s for s in re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.S) if "Plotly.newPlot" in s
            and len(s) < 5_000_000 and "window.PlotlyConfig" not in s[:200]]


def test_report_html_from_hostile_names_holds_no_markup_outside_escaped_text(hostile_results):
    page = reports.to_html(list(hostile_results.values()))
    scripts = _figure_scripts(page)
    assert len(scripts) >= len(hostile_results)
    for script in scripts:
        decoded = script.encode().decode("unicode_escape", errors="ignore")
        for bad in FORBIDDEN:
            assert bad not in decoded, bad
    # Outside the scripts, names are HTML-escaped: no raw tag from a name.
    body = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)
    for raw in ('<a href="https://evil', "<img src=x", "<span style", "<script>alert"):
        assert raw not in body, raw
    assert "&lt;a href=&quot;https://evil.example/model&quot;&gt;" in body  # the model name, as text


# ----------------------------------------------------------------------------------------------------
# Markdown: ui.guard.literal


@pytest.mark.parametrize("text", [
    "SmolLM2-135M-Instruct", "all-MiniLM-L6-v2", "layers.0.mlp.up_proj.weight", "w.safetensors",
    "x.pt: not a checkpoint (3 tensors)", "AT & T", "a: b", "95% CI 0.1 to 0.3",
])
def test_literal_leaves_ordinary_names_as_they_are(text):
    assert literal(text) == text


@pytest.mark.parametrize("text, must_not_contain", [
    ("![x](https://evil.example/x.png)", ["![", "](", "://"]),
    ("[click](https://evil.example)", ["[click]", "://"]),
    ("<img src=x onerror=alert(1)>", ["<img"]),
    ("**bold** _it_ ~~s~~ `code` $x$", ["**", " _it_", "~~", "`code`", "$x$"]),
    ("# heading", ["# "]),
    ("- item", []),
    ("1. item", ["1. "]),
    ("www.evil.example me@evil.example", ["www.", "me@"]),
    (":red[x] :material/home:", [":red", ":material"]),
    ("&lt;b&gt;", ["&lt;"]),
    ("line\n# two\r\n> three", ["\n", "\r"]),
])
def test_literal_neutralises_markdown(text, must_not_contain):
    out = literal(text)
    bare = re.sub(r"\\.", "\x00", out)  # what markdown sees as syntax: the escaped characters blanked
    for piece in must_not_contain:
        assert piece not in bare, (piece, out)
    # Removing the escapes and invisible joiners gives the text back (newlines folded to spaces).
    assert re.sub(r"\\(.)", r"\1", out).replace("\u2060", "") == " ".join(text.split())


def test_internal_error_line_is_the_clis_wording():
    assert internal_error_line(RuntimeError("boom")) == "internal error (RuntimeError: boom), please report it"
    long = internal_error_line(ValueError("x" * 10_000 + "\nsecond line"))
    assert long.startswith("internal error (ValueError: xxx") and long.endswith(" ...), please report it")
    assert len(long) < 400 and "\n" not in long
    assert internal_error_line(KeyError()) == "internal error (KeyError), please report it"
