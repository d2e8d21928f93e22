"""The ``segmorph`` command line: :mod:`segmorph.cli.main` and one module of verbs per capability.

Thin by design: each handler parses its arguments, calls one library function and prints a line.
"""
