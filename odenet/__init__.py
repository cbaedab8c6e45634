"""odenet: a Neural ODE classifier for MNIST, trained with the adjoint method, with a native solver engine."""
from .model import NeuralODEModel, ODEBlock, ODEFunc
from .ode import odeint

__version__ = "0.1.0"
__all__ = ["NeuralODEModel", "ODEBlock", "ODEFunc", "odeint", "__version__"]
