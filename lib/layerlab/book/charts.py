"""Charts (altair) that render with no network.

``show`` displays a chart as HTML holding a static SVG rendered by vl-convert (no CDN,
no JavaScript needed) and the Vega-Lite spec; where ``window.vegaEmbed`` exists (the
book serves vl-convert's own JavaScript bundle from its static files, see
``write_js_bundle``), a small inline script replaces the SVG by the interactive chart.
"""

from __future__ import annotations

import json

import altair as alt
import pandas as pd

alt.data_transformers.disable_max_rows()


def spec(chart: alt.TopLevelMixin) -> dict:
    """The chart's Vega-Lite spec as plain JSON data (NaN and infinities become null,
    which JSON and Vega accept and altair's own serialisation does not guarantee)."""
    return json.loads(chart.to_json(), parse_constant=lambda _: None)


def svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc
    return vlc.vegalite_to_svg(spec(chart))


def html(chart: alt.TopLevelMixin) -> str:
    """A self-contained HTML fragment: the static SVG, upgraded to an interactive chart
    when vega-embed is loaded on the page."""
    import uuid

    chart_id = f"layerlab-chart-{uuid.uuid4().hex[:12]}"
    vl = spec(chart)
    vl.pop("$schema", None)  # a remote URL the offline page does not need (mode is given below)
    payload = json.dumps(vl).replace("</", "<\\/")
    script = ("<script>(function(){var id=%s;function go(){if(!window.vegaEmbed)return;"
              "var spec=JSON.parse(document.getElementById(id+'-spec').textContent);"
              "window.vegaEmbed('#'+id,spec,{actions:false,renderer:'svg',mode:'vega-lite'}).catch(function(e){console.warn(e);});}"
              "if(document.readyState==='loading'){document.addEventListener('DOMContentLoaded',go);}else{go();}})();"
              "</script>" % json.dumps(chart_id))  # only the script is %-formatted: a title may hold '%'
    return (f'<div class="layerlab-chart" id="{chart_id}">{svg(chart)}</div>\n'
            f'<script type="application/json" id="{chart_id}-spec">{payload}</script>\n' + script)


def show(chart: alt.TopLevelMixin) -> None:
    """Display ``chart``: interactive in the book, a static SVG anywhere else (offline)."""
    from IPython.display import display

    display({"text/html": html(chart), "image/svg+xml": svg(chart)}, raw=True)


def write_js_bundle(path) -> None:
    """Write vl-convert's vega + vega-lite + vega-embed bundle (sets window.vegaEmbed)."""
    import vl_convert as vlc
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # in its own scope: the bundle's top-level names (e.g. `_`) would collide with the page's
    bundle = "(function(){\n" + vlc.javascript_bundle() + "\n})();\n"
    Path(path).write_text(bundle, encoding="utf-8")


def rho_curves(points: pd.DataFrame, base_value: float, metric: str, title: str) -> alt.FacetChart:
    """LASER Fig. 2 analogue: ``metric`` vs rho (log scale), one line per layer, one panel
    per matrix type; the unmodified model (``base_value``) as a dashed line.

    points: rows of single reductions (columns matrix_type, layer, rho, value).
    """
    frame = points.assign(base=base_value)
    lines = alt.Chart().mark_line(point=True, strokeWidth=1.2).encode(
        x=alt.X("rho:Q", scale=alt.Scale(type="log"), title="rank fraction kept (rho)"),
        y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
        color=alt.Color("layer:Q", scale=alt.Scale(scheme="viridis"), title="layer"),
        detail="layer:N",
        tooltip=["matrix_type", "layer", "rho", alt.Tooltip("value:Q", format=".3f")],
    )
    rule = alt.Chart().mark_rule(strokeDash=[6, 4], color="black").encode(y="mean(base):Q")
    return alt.layer(lines, rule, data=frame).properties(width=260, height=180).facet(
        column=alt.Column("matrix_type:N", title=None)).properties(title=title)


def delta_heatmap(points: pd.DataFrame, base_value: float, metric: str, title: str) -> alt.Chart:
    """Change of ``metric`` against the unmodified model over (layer, rho), one panel per
    matrix type (blue = better accuracy)."""
    frame = points.assign(delta=points["value"] - base_value)
    limit = max(1e-9, float(frame["delta"].abs().max()))
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("layer:O", title="layer"),
        y=alt.Y("rho:O", title="rho", sort="descending"),
        color=alt.Color("delta:Q", scale=alt.Scale(scheme="redblue", domain=[-limit, limit]),
                        title=f"Δ {metric}"),
        tooltip=["matrix_type", "layer", "rho", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("delta:Q", format="+.3f")],
    ).properties(width=360, height=120).facet(row=alt.Row("matrix_type:N", title=None)).properties(title=title)


ATLAS_LENSES = {"laser_gain": "LASER: best Δ acc (pp)", "angular_distance": "Gromov: d(x_l, x_l+1)",
                "skip_cost": "skip layer l: Δ loss/logV", "swap_cost": "swap l, l+1: Δ loss/logV"}


def atlas(frame: pd.DataFrame, model: str) -> alt.FacetChart:
    """The layer-redundancy atlas of one model (``compare.atlas`` rows): one bar row per lens."""
    frame = frame.assign(lens_title=frame["lens"].map(ATLAS_LENSES))
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("layer:O", title="layer"), y=alt.Y("value:Q", title=None),
        color=alt.Color("lens:N", legend=None)).properties(width=520, height=110).facet(
        row=alt.Row("lens_title:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left"))
    ).resolve_scale(y="independent").properties(title=f"{model}: layer-redundancy atlas")
