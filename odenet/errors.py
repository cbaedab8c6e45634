"""Exceptions whose message is shown to the user as a single line (see ``odenet.cli``)."""


class OdenetError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    exit_code = 1
    quiet = False  # True on the other ranks of a distributed run when rank 0 reports the same error


class SolverError(OdenetError, RuntimeError):
    """The ODE solver could not integrate: step size underflow, too many steps or a non-finite state."""


class DivergenceError(OdenetError):
    """Training produced a non-finite loss or the solver failed mid-training."""


class Interrupted(OdenetError):
    """The user stopped a run (Ctrl-C or SIGTERM); the last checkpoint is kept."""

    exit_code = 130
