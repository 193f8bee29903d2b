"""Regenerate jaxconnectome/connectome_data.json from the PyPI package cect.

The reference derives its 300-neuron graph from the OpenWorm hermaphrodite edge list
(herm_full_edgelist.csv) as read by cect's UpdatedSpreadsheetDataReader, which applies
cect's name normalisation (VB01 -> VB1). Neurons are Cook et al. (2019)'s 302
hermaphrodite neurons without CANL and CANR, which have no synapses, in alphabetical order.

Usage: pip install cect==0.3.5 && python tools/build_connectome.py
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from cect import Cells
from cect.readers.UpdatedSpreadsheetDataReader import UpdatedSpreadsheetDataReader

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "jaxconnectome" / "connectome_data.json"
UNCONNECTED_NEURONS = {"CANL", "CANR"}


def neuron_names() -> list[str]:
    return sorted(set(Cells.PREFERRED_HERM_NEURON_NAMES_COOK) - UNCONNECTED_NEURONS)


def neuron_class(name: str) -> str:
    # Sensory: Cook's 83 sensory neurons plus the 5 pharyngeal polymodal ones.
    if name in Cells.SENSORY_NEURONS_COOK or name in Cells.PHARYNGEAL_POLYMODAL_NEURONS:
        return "sensory"
    if name in Cells.MOTORNEURONS_COOK:
        return "motor"
    return "interneuron"


def read_edges(names: list[str]) -> list[list]:
    """Read every neuron-to-neuron synapse record as [pre, post, count, kind]."""
    index = {name: i for i, name in enumerate(names)}
    # read_data only parses the CSV; the constructor would also read muscle connections.
    reader = UpdatedSpreadsheetDataReader.__new__(UpdatedSpreadsheetDataReader)
    _, connections = reader.read_data()
    edges = []
    for conn in connections:
        if conn.pre_cell not in index or conn.post_cell not in index:
            raise SystemExit(f"error: edge {conn.pre_cell}->{conn.post_cell} names a neuron outside the 300")
        kind = "gap_junction" if conn.syntype == "GapJunction" else "chemical"
        edges.append([index[conn.pre_cell], index[conn.post_cell], int(conn.number), kind])
    edges.sort()
    return edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write")
    args = parser.parse_args()

    names = neuron_names()
    data = {
        "source": "OpenWorm herm_full_edgelist.csv via cect UpdatedSpreadsheetDataReader",
        "neurons": names,
        "classes": [neuron_class(name) for name in names],
        "edge_fields": ["pre", "post", "count", "kind"],
        "edges": read_edges(names),
    }
    text = json.dumps(data, separators=(",", ":"))
    # One edge per line keeps the committed file diffable.
    text = text.replace("],[", "],\n[")
    with tempfile.NamedTemporaryFile("w", dir=args.output.parent, delete=False) as tmp:
        tmp.write(text + "\n")
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, args.output)
    print(f"wrote {args.output}: {len(names)} neurons, {len(data['edges'])} synapse records", file=sys.stderr)


if __name__ == "__main__":
    main()
