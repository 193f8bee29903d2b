"""The connectome data file and the masks built from it."""

import numpy as np
import pytest

from jaxconnectome import connectome


def test_edge_counts_and_hash():
    adjacency = connectome.build_topology("connectome", seed=0)
    assert adjacency.shape == (300, 300)
    assert int(adjacency.sum()) == 5084
    assert int(np.trace(adjacency)) == 45
    assert round(100 * adjacency.mean(), 2) == 5.65
    assert adjacency.any(axis=0).all()
    assert adjacency.any(axis=1).all()
    assert connectome.adjacency_sha256(adjacency) == connectome.ADJACENCY_SHA256


def test_neuron_order_and_classes():
    graph = connectome.load_connectome()
    assert len(graph.neurons) == 300
    assert graph.neurons[:3] == ("ADAL", "ADAR", "ADEL")
    assert list(graph.neurons) == sorted(graph.neurons)
    assert "CANL" not in graph.neurons
    assert "CANR" not in graph.neurons
    assert len(graph.sensory_idx) == 88
    assert len(graph.motor_idx) == 123
    assert graph.classes.count("interneuron") == 89
    for pharyngeal_polymodal in ("MCL", "MCR", "MI", "NSML", "NSMR"):
        assert graph.classes[graph.neurons.index(pharyngeal_polymodal)] == "sensory"
    assert graph.classes[graph.neurons.index("AVAL")] == "interneuron"
    assert graph.classes[graph.neurons.index("VB1")] == "motor"


def test_edge_records_keep_kind_and_count():
    graph = connectome.load_connectome()
    assert graph.edge_kinds.count("chemical") == 3638
    assert graph.edge_kinds.count("gap_junction") == 2168
    assert (graph.edges[:, 2] >= 1).all()
    # Gap junctions are listed in both directions, chemical synapses are not symmetric.
    adjacency = graph.adjacency()
    assert not np.array_equal(adjacency, adjacency.T)


def test_mask_direction():
    adjacency = connectome.build_topology("connectome", seed=0)
    reference = connectome.hop_mask("connectome", "post_to_pre", seed=0)
    transposed = connectome.hop_mask("connectome", "pre_to_post", seed=0)
    assert reference.dtype == np.float32
    np.testing.assert_array_equal(reference, adjacency)
    np.testing.assert_array_equal(transposed, adjacency.T)


def test_random_sparse_follows_seed():
    first = connectome.build_topology("random_sparse", seed=1337)
    again = connectome.build_topology("random_sparse", seed=1337)
    other = connectome.build_topology("random_sparse", seed=42)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert abs(first.mean() - 5084 / 90000) < 0.003


def test_dense_and_unknown_topology():
    assert connectome.build_topology("dense", seed=0).all()
    with pytest.raises(ValueError, match="TOPOLOGY"):
        connectome.build_topology("ring", seed=0)
    with pytest.raises(ValueError, match="SIGNAL_FLOW"):
        connectome.hop_mask("connectome", "sideways", seed=0)


def test_summary_line_matches_reference():
    adjacency = connectome.build_topology("connectome", seed=0)
    assert connectome.summary_line(adjacency, "connectome") == (
        "connectome: neurons=300 edges=5084 sensory=88 motor=123 density=5.65% topology=connectome"
    )
