"""Sixteen hops without skip connections, at the small width: the run that does not learn.

Embed 512, one attention head of 128 after hops 8 and 16, no sensory re-injection.

Launch (FineWeb sp1024 shards and tokenizer in ./data, e.g. from
`python -m jaxconnectome.data download --variant sp1024 --train-shards 10`, or set
DATA_PATH and TOKENIZER_PATH):
    python train.py --config sixteen_hop_no_skips
The reference's equivalent is
`EMBED_DIM=512 NUM_ATTN_HEADS=1 NUM_HOPS=16 CROSS_ATTN_EVERY=8 SKIP_EVERY=0`. The
write-up does not print these settings. They are inferred from its parameter count,
which they match exactly (2,389,633 with the reference code).

Published result (the write-up's ablation table): 2.39M parameters and no
learning at all. Its cross-entropy stays at ln(1024) ~= 6.93 nats, the loss of a uniform
guess over the 1024 tokens. The table lists 6.93 in its val_bpb column and no artifact.
The write-up gives neither the seed nor the step budget. This config keeps the defaults
(seed 1337, 5000 steps, 600 s cap).
"""

SETTINGS = {
    "embed_dim": 512,
    "num_attn_heads": 1,
    "num_hops": 16,
    "cross_attn_every": 8,
    "skip_every": 0,
}
