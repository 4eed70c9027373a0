"""What `--model` names and what it is: tiny random checkpoints, shipped architectures, local folders and Hub
ids (downloaded before loading); a checkpoint's architecture, dtype, quantization and size; 4-bit packings."""
