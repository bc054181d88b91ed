"""Using trained models: load, evaluate, predict, export (the `selfreg eval/predict/export` commands).

    trained = load_trained("runs/demo/checkpoints/best.pt")     # or a .safetensors export
    trained.model, trained.classes, trained.transform
"""
from .trained import Trained, load_trained

__all__ = ["Trained", "load_trained"]
