"""torch.hub entry point: ``torch.hub.load("<this repository or checkout>", "odenet", source="local")``."""
dependencies = ["torch", "torchvision", "torchdiffeq", "numpy", "matplotlib", "sklearn", "tqdm", "yaml", "PIL"]


def odenet(source=None, device="cpu"):
    """The Neural ODE classifier shipped with odenet (99.55% on the MNIST test set), in eval mode.

    ``source``: None for the shipped model, or a run folder / checkpoint file of your own; ``device``: where it
    runs. Feed it ``odenet.preprocess(images)`` — ``(B, 1, 28, 28)`` float32, normalized — and read
    ``model.predict(x)``: class probabilities ``(B, 10)``; ``model.classes`` names them.
    """
    import odenet as package

    return package.load(source, device)
