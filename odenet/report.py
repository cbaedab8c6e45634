"""Figures and report (filled in below)."""


def history_hook(run, history):
    pass


def write_report(run, **kw):
    return run
