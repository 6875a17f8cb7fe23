"""Shipped model folders: <name>/config.json, model.safetensors, card.md."""
