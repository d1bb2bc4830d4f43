"""Checkpoints of quantized trees: safetensors (one file) and orbax (a directory); bit-exact, no pickle."""

from jquant.io.orbax_io import load_orbax, save_orbax
from jquant.io.safetensors_io import load_safetensors, save_safetensors
from jquant.io.storage import from_storage, to_storage
