"""Notebook parameters: a profile's defaults overridden by what the run was given.

papermill's ``-p name value`` passes a list as the string "[0.1, 0.5]" (``-y`` passes YAML and
keeps the list). ``override`` reads such a string back as the list it spells, and refuses any
other string where the profile expects a list, naming the parameter and how to pass it.
"""

from __future__ import annotations

import ast


def as_list(name: str, value):
    """``value`` as a list: a list or tuple as it is, a string that spells a list parsed."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list):
            return parsed
    raise ValueError(f"{name}: {value!r} is not a list; pass lists as Python literals, e.g. "
                     f"-p {name} '[0.1, 0.5]', or with YAML: -y \"{name}: [0.1, 0.5]\"")


def override(defaults: dict, **given) -> dict:
    """A copy of ``defaults`` with every parameter in ``given`` that is not None. A string
    that spells a list becomes that list; where the default is a list, anything but a list
    (or such a string) is refused."""
    cfg = dict(defaults)
    for name, value in given.items():
        if value is None:
            continue
        spells_list = isinstance(value, str) and value.strip().startswith("[")
        cfg[name] = as_list(name, value) if isinstance(defaults.get(name), list) or spells_list else value
    return cfg


def check_names(profile: str, profiles, overrides: dict, overridable) -> None:
    """Refuse, before any work, a profile not in ``profiles`` and an override whose name is
    not in ``overridable``, naming the allowed values."""
    if profile not in profiles:
        raise ValueError(f"profile: {profile!r} is not one of {', '.join(profiles)}")
    unknown = sorted(set(overrides) - set(overridable))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; allowed: {', '.join(overridable)}")
