"""CE-only ablation of the small configuration: embed 512, one head, no JEPA, no SigREG.

Launch (FineWeb sp1024 shards and tokenizer in ./data, e.g. from
`python -m jaxconnectome.data download --variant sp1024 --train-shards 10`, or set
DATA_PATH and TOKENIZER_PATH):
    python train.py --config small_ce_only
The reference's equivalent is `EMBED_DIM=512 NUM_ATTN_HEADS=1 JEPA_WEIGHT=0 SIGREG_WEIGHT=0`.

Published result (the write-up's ablation table): val_bpb 2.01, 1,637,235
parameters, artifact 1.48 MB, worse than `small` with JEPA and SigREG (1.99). The
write-up gives neither the seed nor the step budget. This config keeps the defaults
(seed 1337, 5000 steps, 600 s cap).
"""

SETTINGS = {
    "embed_dim": 512,
    "num_attn_heads": 1,
    "jepa_weight": 0.0,
    "sigreg_weight": 0.0,
}
