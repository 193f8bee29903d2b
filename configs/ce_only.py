"""CE-only ablation of the primary configuration: no JEPA pass and no SigREG.

Same network as `primary` (embed 768, 4 heads of 128, 6 hops, skips every 2 hops). Only
the cross-entropy trains it, so each step runs one forward pass instead of two.

Launch (FineWeb sp1024 shards and tokenizer in ./data, e.g. from
`python -m jaxconnectome.data download --variant sp1024 --train-shards 10`, or set
DATA_PATH and TOKENIZER_PATH):
    python train.py --config ce_only
The reference's equivalent is `JEPA_WEIGHT=0 SIGREG_WEIGHT=0` with its defaults.

Published result (the write-up's ablation table): val_bpb 1.78, 3,336,051
parameters, artifact 1.94 MB. The write-up gives neither the seed nor the step budget of
its ablation runs. This config keeps the defaults (seed 1337, 5000 steps, 600 s cap).
"""

SETTINGS = {
    "jepa_weight": 0.0,
    "sigreg_weight": 0.0,
}
