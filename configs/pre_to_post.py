"""The primary configuration with the hop mask transposed, so that signal follows the synapses.

The reference multiplies each hop weight, laid out [out, in], by the adjacency A[pre, post]
directly, so a neuron receives from its postsynaptic partners and signal flows against
the synapses. Here the mask is A transposed: neuron j receives from i where i -> j is a
synapse. Everything else, the parameter count (3,336,051) included, equals `primary`.

Launch (FineWeb sp1024 shards and tokenizer in ./data, e.g. from
`python -m jaxconnectome.data download --variant sp1024 --train-shards 10`, or set
DATA_PATH and TOKENIZER_PATH):
    python train.py --config pre_to_post
The reference has no setting for this.

Published result: none. This ablation is new. The reference and its write-up never ran
it, so compare against `primary` (val_bpb 1.7942 +- 0.0028 after the int8+zlib round trip).
"""

SETTINGS = {
    "signal_flow": "pre_to_post",
}
