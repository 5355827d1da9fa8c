"""MedAlloc: the installed namespace of the Flower apps, the simulations and the command line.

``medalloc.client`` (the ClientApp, folder ``client/``), ``medalloc.server`` (the ServerApp,
``server/``), ``medalloc.simulations`` (``simulations/``) and ``medalloc.cli`` (the ``medalloc``
command) sit here, over the Flower-free library ``medalloc_core``.
"""

__version__ = "0.1.0"
