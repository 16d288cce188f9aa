"""Reading and writing tensors and files safely.

Weights are stored as safetensors by default; ``.pt``/``.pth`` files are read only through
``torch.load(weights_only=True)``, so a file holding code (pickled objects) is refused. Every write goes
to a temporary file in the same folder and is then renamed over the target, so a killed process never
leaves a half-written file behind.
"""

from transferkit.io.export import export_onnx
from transferkit.io.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from transferkit.io.weights import load_state_dict, save_state_dict

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "export_onnx",
    "load_state_dict",
    "read_json",
    "save_state_dict",
]
