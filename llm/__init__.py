"""The project's own small language model: tokenizer, training, ONNX export with a KV cache."""
