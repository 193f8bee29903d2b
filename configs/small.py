"""Small configuration: embed 512 and a single attention head of 128, otherwise primary.

6 hops through the C. elegans wiring with skips every 2 hops, CE + 0.5 JEPA + 1e-4 SigREG.

Launch (FineWeb sp1024 shards and tokenizer in ./data, e.g. from
`python -m jaxconnectome.data download --variant sp1024 --train-shards 10`, or set
DATA_PATH and TOKENIZER_PATH):
    python train.py --config small
The reference's equivalent is `EMBED_DIM=512 NUM_ATTN_HEADS=1`.

Published result (the write-up's ablation table, 3 seeds): val_bpb 1.99 +- 0.01,
1,637,235 parameters, artifact 1.48 MB. The write-up names neither the seeds nor the step
budget. This config keeps the defaults (seed 1337, 5000 steps, 600 s cap).
"""

SETTINGS = {
    "embed_dim": 512,
    "num_attn_heads": 1,
}
