"""Small configuration with random sparse wiring instead of the connectome.

Embed 512, one attention head, 6 hops. The hop mask is a Bernoulli draw at the
connectome's density (5084 / 90000) from the run's seed. The 88 sensory and 123 motor
neurons stay the connectome's.

Launch (FineWeb sp1024 shards and tokenizer in ./data, e.g. from
`python -m jaxconnectome.data download --variant sp1024 --train-shards 10`, or set
DATA_PATH and TOKENIZER_PATH):
    python train.py --config small_random_sparse
The reference's equivalent is `EMBED_DIM=512 NUM_ATTN_HEADS=1 TOPOLOGY=random_sparse`.

Published result (the write-up's ablation table): val_bpb 1.96, 1,637,235
parameters, artifact 1.48 MB, slightly better than the connectome's 1.99 (`small`). The
write-up gives neither the seed nor the step budget. This config keeps the defaults
(seed 1337, 5000 steps, 600 s cap). The random mask depends on the seed, so another SEED
also draws another wiring.
"""

SETTINGS = {
    "embed_dim": 512,
    "num_attn_heads": 1,
    "topology": "random_sparse",
}
