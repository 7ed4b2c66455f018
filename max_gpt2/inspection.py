"""`max-gpt2 inspect`: how a checkpoint's tensors become GPT-2's parameters, read from the real file.

The table the courses draw by hand (same / renamed / transposed), one row per stored tensor,
grouped by component; then the format, the config and where each value came from, the parameter
count, dtype and bytes. Reads and maps the checkpoint; imports no MAX and compiles nothing.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from max_gpt2.checkpoints import FORMATS
from max_gpt2.checkpoints.mapping import HEAD, PREFIX, apply, component, natural_order
from max_gpt2.weights import FORMATS as MODULES
from max_gpt2.weights import plan, resolve


def describe(source, config=None) -> dict:
    """Everything `inspect` shows, as plain data (what --json prints)."""
    found = resolve(source, config)
    moves = plan(found.tensors, found.config)
    state = apply(moves, found.tensors, MODULES[found.format].NAME)
    rows = []
    for move in moves:
        ours_shape = state[move.ours].shape if move.ours in state else None
        if move.ours == HEAD and ours_shape is None:  # tied: the head is wte
            ours_shape = state[PREFIX + "wte.weight"].shape
        for stored in move.stored or (None,):
            rows.append({
                "component": component(move.ours or stored),
                "stored": stored,
                "stored_shape": list(found.tensors[stored].shape) if stored else None,
                "ours": move.ours,
                "our_shape": list(ours_shape) if ours_shape is not None else None,
                "action": move.action,
            })
    order = {"embeddings": (0,), "final norm": (2,), "head": (3,)}
    rows.sort(key=lambda r: order.get(r["component"], (1, *natural_order(r["component"]))))  # stable: plan order within
    dtypes = sorted({str(a.dtype) for a in found.tensors.values()})
    return {
        "source": found.source,
        "format": found.format,
        "format_name": FORMATS[found.format],
        "tensors": rows,
        "config": [{"field": k, "value": v, "from": found.origin.get(k, "default")}
                   for k, v in found.config.to_dict().items() if k != "model_type"],
        "parameters": int(sum(int(np.prod(a.shape)) for a in state.values())),
        "stored_dtype": ", ".join(dtypes),
        "stored_bytes": int(sum(a.nbytes for a in found.tensors.values())),
    }


def show(info: dict, as_json: bool = False, out=None) -> None:
    out = out or sys.stdout
    if as_json:
        json.dump(info, out, indent=2)
        out.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    # Colour on a terminal only; piped, rich writes no escape codes, and a wide line beats a wrapped name.
    console = Console(file=out, width=None if out.isatty() else 160)
    table = Table(title=f"{info['source']}: {info['format_name']}", title_justify="left")
    for name in ("component", "stored", "shape", "ours", "shape ", "what happens"):
        table.add_column(name, overflow="fold")
    style = {"copied": "dim", "renamed": "", "skipped: a buffer": "yellow", "tied to wte": "cyan"}
    last = None
    for r in info["tensors"]:
        if last is not None and r["component"] != last:
            table.add_section()
        table.add_row(r["component"] if r["component"] != last else "", r["stored"] or "—", _shape(r["stored_shape"]),
                      (r["ours"] or "—").removeprefix(PREFIX), _shape(r["our_shape"]), r["action"],
                      style=style.get(r["action"], "bold"))
        last = r["component"]
    console.print(table)
    config = Table(title="config", title_justify="left")
    for name in ("field", "value", "from"):
        config.add_column(name)
    for c in info["config"]:
        config.add_row(c["field"], str(c["value"]), c["from"], style="yellow" if c["from"].startswith("assumed") else "")
    console.print(config)
    console.print(f"format {info['format']} · {info['parameters']:,} parameters · stored as {info['stored_dtype']}, "
                  f"{info['stored_bytes']:,} bytes", highlight=False)


def _shape(shape) -> str:
    return "—" if shape is None else "[" + ", ".join(map(str, shape)) + "]"
