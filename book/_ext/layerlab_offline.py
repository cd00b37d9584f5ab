"""Keep the built book quiet offline.

- sphinx-thebe (loaded by Jupyter Book) writes an inline script naming thebe's CDN URL on
  every page, even with thebe off. The book has no live kernels, so the script is dropped.
- The theme reads its colour mode from localStorage and logs a console error on a first
  visit (empty mode); a default is set before the theme's deferred script runs.
"""

DEFAULT_MODE = ("if(!document.documentElement.dataset.mode){document.documentElement.dataset.mode='light';"
                "document.documentElement.dataset.theme='light';}")


def _drop_remote_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    keep = []
    for script in scripts:
        body = getattr(script, "attributes", {}).get("body", "") or ""
        src = str(getattr(script, "filename", script) or "")
        if "://" in body or src.startswith(("http://", "https://", "//")):
            continue
        keep.append(script)
    context["script_files"] = keep


def setup(app):
    app.connect("html-page-context", _drop_remote_scripts, priority=900)
    app.add_js_file(None, body=DEFAULT_MODE, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
