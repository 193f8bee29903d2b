"""Primary configuration of the reference: embed 768, 4 heads of 128, 6 hops, CE + JEPA + SigREG.

Launch (FineWeb sp1024 shards and tokenizer in the reference's default folders, or set
DATA_PATH and TOKENIZER_PATH):
    python train.py --config primary
The published runs used 8xH100 with MAX_WALLCLOCK_SECONDS=0 for 5000 steps.

Published result: 3,336,051 parameters; val_bpb 1.7942 +- 0.0028 after the int8+zlib
round trip (seeds 1337, 42, 7); step 0 val_loss 6.9644, val_bpb 4.1247. The 600 s run's
artifact is 1,965,125 bytes: a 1,917,705-byte int8+zlib model plus the script.
"""

SETTINGS = {}
