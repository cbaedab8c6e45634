"""Benchmarks (filled in below)."""


def add_parser(sub) -> None:
    sub.add_parser("bench", help="benchmarks")


def run(args) -> int:
    return 0
