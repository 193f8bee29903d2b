"""Embedded CPU demo: no download, no files from outside the project.

Builds a corpus from the documentation bundled with Python (pydoc topics and standard
library docstrings), trains a 1024-piece BPE tokenizer on it, writes shards into
runs/<run_id>/data/, and trains a narrow model (embed 128, 2 heads of 32, all 6 hops,
JEPA and SigREG on) for 300 steps of 4096 tokens.

Launch:
    python train.py --config demo

Expected on a 2-core CPU: about 6 minutes in all, with validation bits per byte falling
from about 3.9 at step 0 at every validation (every 50 steps).
"""

SETTINGS = {
    "demo_data": True,
    "embed_dim": 128,
    "num_attn_heads": 2,
    "head_dim": 32,
    "train_seq_len": 256,
    "train_batch_tokens": 4096,
    "grad_accum_steps": 1,
    "val_batch_size": 16384,
    "iterations": 300,
    "warmup_steps": 20,
    "learning_rate": 2e-3,
    "val_loss_every": 50,
    "train_log_every": 25,
    "max_wallclock_seconds": 0.0,
}
