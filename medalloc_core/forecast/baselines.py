"""Classical per-series baselines a hospital planner already has: seasonal naive, moving average, Holt-Winters.

Each is a small sklearn/sktime-style estimator: hyperparameters as keyword arguments (no logic
in ``__init__``), ``fit(history) -> self``, learned state in attributes ending in ``_``, and
``predict(horizon) -> (H, Q)`` quantile forecasts at the levels given to ``__init__``. The public
methods validate; the private ``_fit`` / ``_predict`` implement. Adding a baseline means adding
a class to :data:`BASELINES`; the contract tests run over every entry.

:func:`rolling_origin_forecasts` evaluates any of them on the same forecast origins as the
neural forecaster, so both are scored on identical test windows (see docs/metrics.md).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Self

import numpy as np

from medalloc_core.forecast.metrics import DEFAULT_QUANTILES

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- helpers
def _h_step_residual_quantiles(errors_by_step: list[np.ndarray], horizon: int, quantiles: np.ndarray) -> np.ndarray:
    """Empirical quantiles of in-sample h-step errors, shape (H, Q).

    ``errors_by_step[h - 1]`` holds the in-sample errors ``actual - forecast`` made h steps
    ahead. Steps with no in-sample errors (horizon longer than the history allows) reuse the
    furthest step that has some: an honest "as wide as the widest we measured", not an
    extrapolation.
    """
    out = np.empty((horizon, quantiles.size))
    last: np.ndarray | None = None
    for h in range(horizon):
        errs = errors_by_step[h] if h < len(errors_by_step) else np.empty(0)
        if errs.size:
            last = np.quantile(errs, quantiles)
        if last is None:  # cannot happen when min_history guarantees step-1 errors
            raise RuntimeError("no in-sample errors to build quantiles from")
        out[h] = last
    return out


def _finish(point: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Point (H,) + quantile offsets (H, Q) -> non-negative, non-crossing (H, Q).

    Empirical quantiles are already monotone in the level and clipping at 0 keeps the order;
    the running maximum is a guard against floating-point ties, not a correction.
    """
    q = np.clip(point[:, None] + offsets, 0.0, None)
    return np.maximum.accumulate(q, axis=1)


def _seasonal_naive_point(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Repeat the last season: forecast for t+h is x[t + h - season * ceil(h / season)]."""
    last_season = history[-season:]
    return np.array([last_season[(h - 1) % season] for h in range(1, horizon + 1)], dtype=float)


def _seasonal_naive_errors(history: np.ndarray, horizon: int, season: int) -> list[np.ndarray]:
    """In-sample h-step errors of the seasonal naive forecast from every usable origin.

    From origin t (last observed index) the h-step forecast is x[t - season + 1 + (h-1) % season];
    origins run from season - 1 (first with a full season behind it) to n - 1 - h.
    """
    n = history.size
    errors = []
    for h in range(1, horizon + 1):
        origins = np.arange(season - 1, n - h)
        if origins.size == 0:
            break
        errors.append(history[origins + h] - history[origins - season + 1 + (h - 1) % season])
    return errors


# ----------------------------------------------------------------------------- base class
class BaselineForecaster:
    """Shared validation for the per-series baselines.

    Subclasses set their hyperparameters in ``__init__`` (stored as given, checked in ``fit``),
    implement ``min_history`` (how many periods ``fit`` needs), ``_fit`` and ``_predict``.

    Attributes set by ``fit``
    -------------------------
    history_ : ndarray (n,)   the training series as float
    start_ : object           the ``start`` label passed to ``fit`` (e.g. the date of
                              ``history[0]``); kept for the caller, not used by the maths
    n_obs_ : int              len(history)
    """

    quantiles: tuple[float, ...]

    def min_history(self) -> int:
        """The fewest periods ``fit`` accepts."""
        raise NotImplementedError

    def _check_params(self) -> None:
        levels = np.asarray(self.quantiles, dtype=float)
        if levels.ndim != 1 or levels.size == 0:
            raise ValueError(f"quantiles must be a non-empty sequence of levels; got {self.quantiles!r}")
        if np.any((levels <= 0) | (levels >= 1)) or np.any(np.diff(levels) <= 0):
            raise ValueError(f"quantiles must be strictly increasing levels in (0, 1); got {self.quantiles!r}")

    def fit(self, history: np.ndarray, *, start: Any = None) -> Self:
        """Learn from one series' history (oldest first) and return ``self``.

        Parameters
        ----------
        history : array, shape (n,)
            Non-negative counts (admissions, occupied beds) at consecutive periods, no gaps.
        start : optional
            Label of ``history[0]`` (e.g. a ``pd.Timestamp``), stored as ``start_``.

        Raises
        ------
        ValueError
            If the history is not 1-D, has non-finite or negative values, or is shorter than
            ``min_history()`` (the message says how long it must be).
        """
        self._check_params()
        history = np.asarray(history, dtype=float)
        if history.ndim != 1:
            raise ValueError(f"history must be one series of shape (n,); got shape {history.shape}")
        if not np.all(np.isfinite(history)):
            raise ValueError(f"history contains {int(np.sum(~np.isfinite(history)))} missing/non-finite value(s)")
        if np.any(history < 0):
            raise ValueError("history contains negative values; counts cannot be negative")
        need = self.min_history()
        if history.size < need:
            raise ValueError(
                f"{type(self).__name__} needs a history of at least {need} periods "
                f"({self._why_min_history()}); got {history.size}"
            )
        self.history_ = history
        self.start_ = start
        self.n_obs_ = int(history.size)
        self._fit(history)
        return self

    def update(self, history: np.ndarray, *, start: Any = None) -> Self:
        """Condition on a longer history without re-estimating parameters; returns ``self``.

        Used by :func:`rolling_origin_forecasts` between refits. Baselines with nothing to
        estimate simply fit again.
        """
        return self.fit(history, start=start)

    def predict(self, horizon: int) -> np.ndarray:
        """Quantile forecasts for the next ``horizon`` periods after the history's end.

        Returns
        -------
        ndarray, shape (horizon, Q)
            Non-negative, non-decreasing along Q, in the order of ``quantiles``.
        """
        if not hasattr(self, "history_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(history) first")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon must be a positive integer; got {horizon!r}")
        out = self._predict(int(horizon))
        assert out.shape == (horizon, len(self.quantiles)), out.shape
        return out

    def _why_min_history(self) -> str:
        return "to estimate the forecast error distribution"

    def _fit(self, history: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, horizon: int) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({params})"


# ----------------------------------------------------------------------------- seasonal naive
class SeasonalNaive(BaselineForecaster):
    """ "Same day last week": the forecast repeats the last observed season.

    Quantiles are the point forecast plus the empirical quantiles of this method's own
    in-sample h-step-ahead errors (each step its own distribution, so bands widen with the
    horizon only if the errors do), clipped at 0.

    Parameters
    ----------
    season : int, default 7
        Season length in periods (7 for daily data, 52 for weekly).
    quantiles : sequence of float, default (0.1, 0.5, 0.9)
    """

    def __init__(self, season: int = 7, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> None:
        self.season = season
        self.quantiles = tuple(quantiles)

    def min_history(self) -> int:
        # One season for the point forecast plus one more so that every weekday contributes
        # at least one in-sample error to the quantiles.
        return 2 * self.season

    def _why_min_history(self) -> str:
        return f"two seasons of {self.season}: one to repeat, one to measure its errors"

    def _check_params(self) -> None:
        super()._check_params()
        if not isinstance(self.season, (int, np.integer)) or self.season < 1:
            raise ValueError(f"season must be a positive integer; got {self.season!r}")

    def _fit(self, history: np.ndarray) -> None:
        self.last_season_ = history[-self.season :].copy()

    def _predict(self, horizon: int) -> np.ndarray:
        point = _seasonal_naive_point(self.history_, horizon, self.season)
        errors = _seasonal_naive_errors(self.history_, horizon, self.season)
        return _finish(point, _h_step_residual_quantiles(errors, horizon, np.asarray(self.quantiles)))


# ----------------------------------------------------------------------------- moving average
class MovingAverage(BaselineForecaster):
    """Flat forecast at the mean of the last ``window`` periods.

    Quantiles from the empirical distribution of this method's in-sample h-step errors,
    added to the flat point forecast and clipped at 0.

    Parameters
    ----------
    window : int, default 7
        Number of most recent periods averaged (7 = one week of daily data, which also
        averages the weekday pattern away).
    quantiles : sequence of float, default (0.1, 0.5, 0.9)
    """

    def __init__(self, window: int = 7, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> None:
        self.window = window
        self.quantiles = tuple(quantiles)

    def min_history(self) -> int:
        return 2 * self.window

    def _why_min_history(self) -> str:
        return f"two windows of {self.window}: one to average, one to measure its errors"

    def _check_params(self) -> None:
        super()._check_params()
        if not isinstance(self.window, (int, np.integer)) or self.window < 1:
            raise ValueError(f"window must be a positive integer; got {self.window!r}")

    def _fit(self, history: np.ndarray) -> None:
        self.level_ = float(np.mean(history[-self.window :]))

    def _predict(self, horizon: int) -> np.ndarray:
        x = self.history_
        w = self.window
        csum = np.concatenate([[0.0], np.cumsum(x)])
        # ma[t] = mean(x[t-w+1 : t+1]) for origins t = w-1 .. n-1
        ma = (csum[w:] - csum[:-w]) / w  # index i <-> origin t = i + w - 1
        errors = []
        for h in range(1, horizon + 1):
            origins = np.arange(w - 1, x.size - h)
            if origins.size == 0:
                break
            errors.append(x[origins + h] - ma[origins - (w - 1)])
        point = np.full(horizon, self.level_)
        return _finish(point, _h_step_residual_quantiles(errors, horizon, np.asarray(self.quantiles)))


# ----------------------------------------------------------------------------- Holt-Winters
@contextlib.contextmanager
def _quiet_convergence() -> Iterator[None]:
    """Silence statsmodels' ConvergenceWarning (and only that) inside the block.

    The optimiser often stops at its iteration limit on short or flat series with a fit that
    is still fine; every other warning category still reaches the user.
    """
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


class HoltWinters(BaselineForecaster):
    """Additive Holt-Winters exponential smoothing (statsmodels ``ExponentialSmoothing``).

    Level + optional (damped) additive trend + additive season, parameters by maximum
    likelihood. Quantiles come from ``simulate()``: ``n_paths`` future paths driven by
    bootstrapped in-sample one-step residuals, pushed through the fitted state equations so the
    band widens with the horizon as the model implies. This is cheaper than in-sample h-step
    residuals (which would need a forecast from every in-sample origin) and, unlike a normal
    approximation, keeps the skew of count data. The simulation seed is ``seed``: same seed,
    same quantiles.

    Series the model cannot fit soundly — constant (incl. all-zero) series, histories shorter
    than ``min_fit_seasons`` seasons, or a fit that produces non-finite values — fall back to
    :class:`SeasonalNaive` with a logged warning; ``fallback_`` says whether that happened.

    Parameters
    ----------
    season : int, default 7
    trend : {"add", None}, default "add"
    damped : bool, default True
        Damp the trend so long horizons do not extrapolate a short-lived slope (ignored when
        ``trend`` is None).
    n_paths : int, default 500
        Simulated paths for the quantiles; 500 puts the P10/P90 sampling error well below the
        forecast error itself.
    min_fit_seasons : int, default 3
        Fewer seasons than this and the initial seasonal states are too noisy to estimate:
        use the seasonal naive fallback.
    method : str, default "SLSQP"
        scipy optimiser for the maximum-likelihood fit. statsmodels' own default (L-BFGS-B)
        reaches the same sum of squared errors (within 0.5% on the benchmark's series) but
        takes 5-15x longer per fit; see simulations/benchmarks/baselines_rolling.py.
        "least_squares" is the most accurate and about 5x slower than SLSQP.
    use_brute : bool, default False
        statsmodels' grid search for starting values; slower and rarely better on daily
        hospital series.
    seed : int, default 0
    quantiles : sequence of float, default (0.1, 0.5, 0.9)
    """

    # Set by fit: the statsmodels results and their parameters, or None on the fallback path,
    # where naive_ forecasts instead.
    fallback_: bool
    results_: Any
    params_: dict[str, Any] | None
    naive_: SeasonalNaive

    def __init__(
        self,
        season: int = 7,
        trend: Literal["add"] | None = "add",
        damped: bool = True,
        n_paths: int = 500,
        min_fit_seasons: int = 3,
        method: str = "SLSQP",
        use_brute: bool = False,
        seed: int = 0,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> None:
        self.season = season
        self.trend = trend
        self.damped = damped
        self.n_paths = n_paths
        self.min_fit_seasons = min_fit_seasons
        self.method = method
        self.use_brute = use_brute
        self.seed = seed
        self.quantiles = tuple(quantiles)

    def min_history(self) -> int:
        return 2 * self.season  # what the seasonal naive fallback needs

    def _why_min_history(self) -> str:
        return (
            f"two seasons of {self.season} for the seasonal naive fallback; {self.min_fit_seasons} to fit Holt-Winters"
        )

    def _check_params(self) -> None:
        super()._check_params()
        if not isinstance(self.season, (int, np.integer)) or self.season < 2:
            raise ValueError(f"season must be an integer >= 2; got {self.season!r}")
        if self.trend not in ("add", None):
            raise ValueError(f"trend must be 'add' or None; got {self.trend!r}")
        if not isinstance(self.n_paths, (int, np.integer)) or self.n_paths < 10:
            raise ValueError(f"n_paths must be an integer >= 10; got {self.n_paths!r}")
        if self.min_fit_seasons < 2:
            raise ValueError(
                f"min_fit_seasons must be >= 2 (statsmodels needs two seasons); got {self.min_fit_seasons!r}"
            )

    def _model(self, history: np.ndarray, **init: Any) -> Any:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        return ExponentialSmoothing(
            history,
            trend=self.trend,
            damped_trend=bool(self.damped and self.trend is not None),
            seasonal="add",
            seasonal_periods=self.season,
            **init,
        )

    def _fall_back(self, history: np.ndarray, reason: str) -> None:
        logger.warning("Holt-Winters falls back to seasonal naive (season %s): %s", self.season, reason)
        self.fallback_ = True
        self.results_ = None
        self.params_ = None
        self.naive_ = SeasonalNaive(season=self.season, quantiles=self.quantiles).fit(history)

    def _fit(self, history: np.ndarray) -> None:
        if history.size < self.min_fit_seasons * self.season:
            self._fall_back(history, f"{history.size} periods < {self.min_fit_seasons} seasons")
            return
        if np.ptp(history) == 0:
            self._fall_back(history, f"constant series (every value {history[0]:g})")
            return
        with _quiet_convergence(), np.errstate(all="ignore"):
            results = self._model(history, initialization_method="estimated").fit(
                method=self.method, use_brute=self.use_brute
            )
        self._accept(history, results)

    def _accept(self, history: np.ndarray, results: Any) -> None:
        if not np.all(np.isfinite(results.fittedvalues)) or not np.all(np.isfinite(results.resid)):
            self._fall_back(history, "the fit produced non-finite values")
            return
        self.fallback_ = False
        self.results_ = results
        self.params_ = {
            k: results.params[k]
            for k in (
                "smoothing_level",
                "smoothing_trend",
                "smoothing_seasonal",
                "damping_trend",
                "initial_level",
                "initial_trend",
                "initial_seasons",
            )
        }

    def update(self, history: np.ndarray, *, start: Any = None) -> Self:
        """Re-run the smoothing filter over a longer history with the parameters (smoothing
        weights and initial states) already estimated; no optimisation, so it costs a few ms.

        The new history must extend the old one (same first period). A fallback model, or one
        never fitted, is simply fitted again.
        """
        params = getattr(self, "params_", None)
        if params is None:
            return self.fit(history, start=start)
        new = np.asarray(history, dtype=float)
        if new.ndim != 1 or new.size < self.n_obs_ or not np.array_equal(new[: self.n_obs_], self.history_):
            raise ValueError("update() needs the fitted history extended by newer periods; call fit() instead")
        if not np.all(np.isfinite(new)) or np.any(new < 0):
            raise ValueError("history contains missing, non-finite or negative values")
        self.history_ = new
        self.n_obs_ = int(new.size)
        self.start_ = start if start is not None else self.start_
        init: dict[str, Any] = {
            "initialization_method": "known",
            "initial_level": params["initial_level"],
            "initial_seasonal": params["initial_seasons"],
        }
        fixed: dict[str, Any] = {
            "smoothing_level": params["smoothing_level"],
            "smoothing_seasonal": params["smoothing_seasonal"],
        }
        if self.trend is not None:
            init["initial_trend"] = params["initial_trend"]
            fixed["smoothing_trend"] = params["smoothing_trend"]
            if self.damped:
                fixed["damping_trend"] = params["damping_trend"]
        with _quiet_convergence(), np.errstate(all="ignore"):
            results = self._model(new, **init).fit(optimized=False, **fixed)
        self._accept(new, results)
        if self.fallback_:  # keep update() total: refit from scratch on the fallback path
            return self.fit(new, start=self.start_)
        return self

    def _predict(self, horizon: int) -> np.ndarray:
        if self.fallback_:
            return self.naive_.predict(horizon)
        with np.errstate(all="ignore"):
            point = np.asarray(self.results_.forecast(horizon), dtype=float)
            paths = np.asarray(
                self.results_.simulate(
                    horizon,
                    repetitions=self.n_paths,
                    error="add",
                    random_errors="bootstrap",
                    rng=np.random.default_rng(self.seed),
                ),
                dtype=float,
            ).reshape(horizon, self.n_paths)  # (H, paths)
        if not (np.all(np.isfinite(point)) and np.all(np.isfinite(paths))):
            logger.warning("Holt-Winters forecast is non-finite; using seasonal naive for this forecast")
            return SeasonalNaive(season=self.season, quantiles=self.quantiles).fit(self.history_).predict(horizon)
        # Quantiles of the simulated paths around their own centre, re-centred on the exact
        # point forecast: removes the simulation noise from the median.
        offsets = np.quantile(paths - point[:, None], self.quantiles, axis=1).T  # (H, Q)
        offsets -= np.median(paths - point[:, None], axis=1)[:, None]
        return _finish(point, offsets)


# ----------------------------------------------------------------------------- registry and evaluation
BASELINES: dict[str, type[BaselineForecaster]] = {
    "seasonal_naive": SeasonalNaive,
    "moving_average": MovingAverage,
    "holt_winters": HoltWinters,
}


def make_baseline(name: str, **params: Any) -> BaselineForecaster:
    """Build a registered baseline by name, e.g. ``make_baseline("holt_winters", season=7)``."""
    try:
        cls = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}") from None
    return cls(**params)


def rolling_origin_forecasts(
    series: np.ndarray,
    origins: Sequence[int],
    horizon: int,
    estimator_factory: Callable[[], BaselineForecaster],
    *,
    refit_every: int = 1,
) -> np.ndarray:
    """Forecast ``horizon`` periods ahead from each origin, using only data up to that origin.

    For origin ``t`` (index of the last observed period) the estimator sees ``series[:t+1]``
    and predicts ``series[t+1 : t+1+horizon]`` — the same windows the neural forecaster's test
    set is defined by, so both are scored on identical targets.

    Parameters
    ----------
    series : array, shape (n,)
    origins : sequence of int
        Indices of the last observed period, each in ``[0, n-1]``; any order, duplicates allowed.
    horizon : int
    estimator_factory : callable returning an unfitted estimator
        e.g. ``lambda: HoltWinters(season=7)`` or ``BASELINES["seasonal_naive"]``.
    refit_every : int, default 1
        Re-estimate parameters at every ``refit_every``-th origin (in time order); in between,
        ``update()`` only conditions the already-fitted model on the newer data. Parameters
        are always estimated on data up to an origin no later than the one forecast, so no
        future value leaks in. 1 = refit at every origin (the cleanest comparison).

    Returns
    -------
    ndarray, shape (len(origins), horizon, Q), in the order of ``origins``.
    """
    series = np.asarray(series, dtype=float)
    if series.ndim != 1:
        raise ValueError(f"series must have shape (n,); got {series.shape}")
    if isinstance(refit_every, bool) or not isinstance(refit_every, int) or refit_every < 1:
        raise ValueError(f"refit_every must be a positive integer; got {refit_every!r}")
    origins_arr = np.asarray(origins)
    if origins_arr.ndim != 1 or origins_arr.size == 0 or not np.issubdtype(origins_arr.dtype, np.integer):
        raise ValueError(f"origins must be a non-empty sequence of integer indices; got {origins!r}")
    bad = origins_arr[(origins_arr < 0) | (origins_arr >= series.size)]
    if bad.size:
        raise ValueError(f"origins {bad.tolist()} are outside the series (valid: 0..{series.size - 1})")

    order = np.argsort(origins_arr, kind="stable")
    out: np.ndarray | None = None
    estimator: BaselineForecaster | None = None
    for k, i in enumerate(order):
        t = int(origins_arr[i])
        history = series[: t + 1]
        if estimator is None or k % refit_every == 0:
            estimator = estimator_factory().fit(history)
        else:
            estimator = estimator.update(history)
        pred = estimator.predict(horizon)
        if out is None:
            out = np.empty((origins_arr.size,) + pred.shape)
        out[i] = pred
    assert out is not None
    return out
