"""Exchange models with the PyTorch reference, without torch.

- `torch_format`: the torch.save zip+pickle container, written and read in plain Python.
- `quantize`: the challenge's int8_clean_per_row_v1 quantisation, bit-exact with torch.
- `exchange`: Flax model <-> state_dict, config inference from shapes, reading model files.
- `compact`: a smaller artifact that stores only the hop weights the mask keeps.
- `run_export`: the end-of-run export and int8+zlib round trip with the reference's log lines.
"""

from jaxconnectome.artifact.errors import ArtifactError
from jaxconnectome.artifact.exchange import (
    LoadedArtifact,
    export_state_dict,
    import_model,
    infer_model_config,
    model_from_state_dict,
    read_artifact,
    read_artifact_bytes,
)
from jaxconnectome.artifact.run_export import ExportResult, code_files, code_size, export_run, validation_evaluator

__all__ = [
    "ArtifactError",
    "ExportResult",
    "LoadedArtifact",
    "code_files",
    "code_size",
    "export_run",
    "export_state_dict",
    "import_model",
    "infer_model_config",
    "model_from_state_dict",
    "read_artifact",
    "read_artifact_bytes",
    "validation_evaluator",
]
