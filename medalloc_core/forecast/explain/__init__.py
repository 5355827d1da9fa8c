"""Why did the model forecast this? Attributions over a forecast's input window, a faithfulness check, plain words.

Needs the optional extra ``explain`` (Captum) for the attributions themselves; everything is
computed where the records are (a hospital's own machine) and nothing is sent anywhere.
"""

from medalloc_core.forecast.explain.attribution import METHODS, Attribution, ForecastFunction, attribute
from medalloc_core.forecast.explain.faithfulness import DeletionCurve, deletion_curve
from medalloc_core.forecast.explain.forecast import ExplainError, ForecastExplanation, explain_forecast
from medalloc_core.forecast.explain.words import ChannelGroup, describe, group_attributions

__all__ = [
    "METHODS",
    "Attribution",
    "ChannelGroup",
    "DeletionCurve",
    "ExplainError",
    "ForecastExplanation",
    "ForecastFunction",
    "attribute",
    "deletion_curve",
    "describe",
    "explain_forecast",
    "group_attributions",
]
