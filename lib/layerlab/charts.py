"""Charts (altair) that render with no network.

``show`` displays a chart as inline SVG rendered by vl-convert (no CDN, no JavaScript),
so executed notebooks and the built book draw their figures offline.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

alt.data_transformers.disable_max_rows()


def svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc
    return vlc.vegalite_to_svg(chart.to_json())


def show(chart: alt.TopLevelMixin) -> None:
    """Display ``chart`` as inline SVG (renders offline in Jupyter and Jupyter Book)."""
    from IPython.display import SVG, display
    display(SVG(svg(chart)))


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
