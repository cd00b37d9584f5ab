"""``python -m layerlab.book.work --profile full [--device h100|cpu] [--tokens chars] [--json]``:
the book plan's counted work and its estimated time (see ``layerlab.book.work``)."""

from __future__ import annotations

import argparse
import json
import os

from .device import DEVICES
from .inputs import Context
from .report import dtype_bytes_for, plan_rows, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The book plan's counted work and its estimated time on one "
                                     "H100 (stated speed) or this CPU (calibrated).")
    parser.add_argument("--profile", default="full", help="smoke | quick | full (default full)")
    parser.add_argument("--device", default="h100", help="h100 (stated speed) | cpu (calibrates each model first)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument("--tokens", default="tokenizer", help="tokenizer (fall back to chars/4) | chars")
    parser.add_argument("--json", action="store_true", help="print every chapter's counts as JSON instead")
    args = parser.parse_args(argv)
    from layerlab.book import build

    if args.profile not in build.PROFILES:
        parser.error(f"--profile: {args.profile!r} is not one of {', '.join(build.PROFILES)}")
    if args.device not in DEVICES:
        parser.error(f"--device: {args.device!r} is not one of {', '.join(DEVICES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ctx = Context(device_type="cuda" if args.device == "h100" else "cpu",
                  dtype_bytes=dtype_bytes_for(args.device, args.dtype), tokens=args.tokens)
    rows, device = plan_rows(build.chapter_plan(args.profile), args.profile, args.device, args.dtype, ctx=ctx)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "work"} | {"work": [w.as_dict() for w in r["work"]]}
                          for r in rows], indent=1, default=str))
    else:
        print(summary(rows, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
