"""Typer glue of ``attnbench.cli``: options declared once and shared by several commands,
and help that prints no ``<bool>`` after flags."""

from __future__ import annotations

import functools
import inspect
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup


class _FlagsWithoutType:
    """Help without a ``<bool>`` type after flags that take no value (typer 0.29 prints one)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Group(_FlagsWithoutType, TyperGroup):
    pass


class Command(_FlagsWithoutType, TyperCommand):
    pass



def opt(kind, help: str, *names: str, **kwargs):
    """The annotation of a typer option of type ``kind``."""
    return Annotated[kind, typer.Option(*names, help=help, **kwargs)]


def with_options(fn, *groups):
    """``fn`` as a command taking the option ``groups`` in order, each a dict name ->
    (annotation, default), with ``...`` where ``fn``'s own parameters go; ``fn`` gets the
    groups' values as one dict, ``shared``."""
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
           if p.name != "shared"]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [p for g in groups for p in (own if g is ... else [
        inspect.Parameter(n, kind, default=d, annotation=a) for n, (a, d) in g.items()])]
    names = {n for g in groups if g is not ... for n in g}

    @functools.wraps(fn)
    def call(**kwargs):
        shared = {n: kwargs.pop(n) for n in names}
        return fn(**kwargs, **({"shared": shared} if names else {}))

    call.__signature__ = inspect.Signature(params)
    call.__annotations__ = {p.name: p.annotation for p in params}
    return call
