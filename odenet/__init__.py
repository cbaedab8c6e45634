"""odenet: a Neural ODE classifier for MNIST, trained with the adjoint method, on a native solver engine.

The public API is ``__all__``; docs/api.md shows each name with an example.
"""
from .api import dataset, fit, load, preprocess
from .config import Config
from .errors import OdenetError, SolverError
from .model import NeuralODEModel, ODEBlock, ODEFunc
from .ode import AdjointSpec, Solution, Solver, Stats, StepController, integrate, odeint, odeint_adjoint

__version__ = "0.1.0"
__all__ = ["load", "preprocess", "dataset", "fit", "Config", "NeuralODEModel", "ODEBlock", "ODEFunc", "Solver",
           "StepController", "AdjointSpec", "integrate", "Solution", "Stats", "odeint", "odeint_adjoint",
           "OdenetError", "SolverError"]
