"""Data sets for Roost's demo pipeline: a real tabular one and a synthetic, drift-able fraud one.

Both are plain functions returning a :class:`Dataset` (a pandas frame plus the feature order);
the Dagster assets wrap them. Nothing is downloaded: the breast-cancer data ships with
scikit-learn and the fraud data is generated from a seed.

Breast cancer
-------------
``load_breast_cancer_dataset`` returns scikit-learn's bundled Wisconsin diagnostic data set
(569 rows, 30 float features, ``label`` 1 = benign, 0 = malignant) with the feature names turned
into snake_case identifiers (``"mean radius"`` -> ``"mean_radius"``).

Synthetic card transactions
---------------------------
``generate_fraud_transactions`` draws everything from ``numpy.random.default_rng(seed)`` in a
fixed order, so the same arguments always give the same frame. The generating process:

1. **Customers** ``c = 1..n_customers`` each get a latent risk score ``r_c ~ N(0, 1)`` (never
   shown to the model), a home country (weighted draw from 12 countries), an account opened
   ``1 + Exp(700)`` days before ``start`` (capped at ten years), a typical spend
   ``log m_c ~ N(log 45, 0.6)`` and an activity weight ``a_c ~ Gamma(1.5)``.
2. **Transactions** pick a customer with probability proportional to ``a_c``, a day uniformly in
   the window and an hour of day from a daytime-heavy profile (quiet from 00:00 to 06:00), plus a
   uniform minute and second. Rows are sorted by ``event_timestamp`` (tz-aware UTC).
3. **Features** (all float, moderate magnitudes, no missing values):

   - ``amount``: ``m_c * exp(0.8 * N(0, 1))``, rounded to cents;
   - ``hour_of_day``: the transaction's hour (0-23);
   - ``is_foreign``: 1 when the transaction country differs from the home country; a
     transaction is abroad with probability ``0.03 + 0.05 * sigmoid(r_c)``;
   - ``merchant_risk``: the merchant's risk score in [0, 1], ``Beta(2, 8)``;
   - ``customer_age_days``: account age at the event;
   - ``txn_count_24h``: the customer's earlier transactions in the preceding 24 hours;
   - ``avg_amount_30d``: mean amount of the customer's earlier transactions in the preceding
     30 days (the transaction's own amount when there are none);
   - ``amount_vs_avg_30d``: ``amount / avg_amount_30d``.

4. **Label** ``label`` (is_fraud) is Bernoulli(``sigmoid(z)``) with

   ``z = -4.55 + 0.5 r_c + 2.2 is_foreign + 8.0 (merchant_risk - 0.2) + 1.6 [hour < 6]
   + 1.6 log(amount_vs_avg_30d) + 0.7 min(txn_count_24h, 6) + 2.0 exp(-customer_age_days / 90)``

   which gives a fraud rate of about 5% at ``drift = 0`` (about 95% accuracy for a model that
   always says "no fraud", so judge fraud models by ROC AUC). The latent ``r_c`` and the
   Bernoulli draw keep the best achievable ROC AUC well below 1 (a default gradient-boosted
   model gets about 0.87 on held-out rows).

**Drift.** ``drift`` in [0, 1] shifts the inputs without changing the random draws (each shift is
a deterministic transform of the same draws, so ``drift = 0`` is the undrifted data exactly):
amounts scale by ``1 + drift`` (so ``avg_amount_30d`` scales too, the ratio does not), the chance
of a foreign transaction rises by ``0.15 * drift`` and merchant risk becomes
``merchant_risk ** (1 / (1 + 0.6 drift))`` (higher). The label keeps the same logistic function of
the features, so drift also raises the fraud rate, as covariate shift would (about 5% at
``drift = 0``, 10% at 0.5 and 15% at 1 for the default arguments).

**Protected attribute.** Each customer gets an ``age_band``, ``"40_plus"`` with probability
:data:`AGE_40_PLUS_SHARE` (0.35) else ``"under_40"`` (the US ADEA protects workers aged 40 and
over), drawn from a *separate* stream, ``numpy.random.default_rng([seed, 14])``, so adding it
changed none of the draws above. It is a column of the frame, NOT a feature
(:data:`FRAUD_FEATURES` leaves it out): at ``bias = 0`` (the default) nothing in steps 1-4 depends
on it, so the clean demo is fair by construction (any gap a model shows between the bands is
sampling noise). Fairness is measured against it (:mod:`monitoring.fairness`); at serving time it
travels as request metadata (a ``roost-attr-age_band`` header), never as a model input.

**Bias.** ``bias`` in [0, 1] makes the data discriminate against ``"40_plus"`` customers through
proxies, as biased historical data does: for their transactions the chance of a foreign
transaction rises by ``0.5 * bias``, merchant risk becomes ``merchant_risk ** (1 / (1 + 3 bias))``
and the fraud logit gains ``2.5 * bias`` (the same deterministic-transform rule as drift: the
draws do not change, ``bias = 0`` is the fair data exactly). A model trained on or judged by
such data flags the band far more often: with ``bias = 1`` the demographic-parity difference
and the four-fifths rule both fail (tests/governance/test_fairness.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

LABEL = "label"
PROTECTED_ATTRIBUTE = "age_band"
"""The fraud data's protected attribute column (not a feature; see the module docstring)."""
AGE_BANDS = ("under_40", "40_plus")
AGE_40_PLUS_SHARE = 0.35

FRAUD_FEATURES: list[str] = [
    "amount",
    "hour_of_day",
    "is_foreign",
    "merchant_risk",
    "customer_age_days",
    "txn_count_24h",
    "avg_amount_30d",
    "amount_vs_avg_30d",
]

_COUNTRIES = ["US", "GB", "DE", "FR", "NL", "ES", "IT", "CA", "AU", "JP", "BR", "IN"]
_COUNTRY_WEIGHTS = np.array([30, 12, 10, 9, 5, 6, 6, 6, 4, 4, 4, 4], dtype=np.float64)
# Relative transaction volume per hour of day (UTC): quiet at night, busy in the day.
_HOUR_PROFILE = np.array(
    [1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 3.5, 4.0, 4.2, 4.5,
     5.0, 4.8, 4.5, 4.3, 4.5, 5.0, 5.5, 5.2, 4.5, 3.5, 2.5, 1.6],
    dtype=np.float64,
)  # fmt: skip
_DAY = 86_400
# Coefficients of the fraud logit (see the module docstring).
_LOGIT: dict[str, float] = {
    "intercept": -4.55,
    "latent_risk": 0.5,
    "is_foreign": 2.2,
    "merchant_risk": 8.0,
    "night": 1.6,
    "log_amount_vs_avg": 1.6,
    "txn_count_24h": 0.7,
    "new_account": 2.0,
}


@dataclass
class Dataset:
    """A named tabular data set: ``frame`` holds the features, the label and any id columns."""

    name: str
    frame: pd.DataFrame
    feature_names: list[str]
    label: str = LABEL
    description: str = field(default="", compare=False)

    def fingerprint(self) -> str:
        """A sha256 hex digest of the data set's content (values, columns, dtypes, roles).

        Uses ``pandas.util.hash_pandas_object`` over the rows (index included) and adds the column
        names and dtypes, which row hashes do not cover. Stable across processes and platforms.
        """
        digest = hashlib.sha256()
        header = "|".join(
            [self.name, self.label, ",".join(self.feature_names)]
            + [f"{col}:{dtype}" for col, dtype in self.frame.dtypes.items()]
        )
        digest.update(header.encode("utf-8"))
        rows = pd.util.hash_pandas_object(self.frame, index=True).to_numpy(dtype=np.uint64)
        digest.update(rows.astype("<u8").tobytes())
        return digest.hexdigest()

    @property
    def X(self) -> np.ndarray:
        """The features in ``feature_names`` order as a float32 matrix."""
        return self.frame[self.feature_names].to_numpy(dtype=np.float32)

    @property
    def y(self) -> np.ndarray:
        """The label column as int64."""
        return self.frame[self.label].to_numpy(dtype=np.int64)


def _snake_case(name: str) -> str:
    cleaned = re.sub(r"[^0-9a-zA-Z]+", "_", name.strip().lower()).strip("_")
    if not cleaned:
        raise ValueError(f"feature name {name!r} has no identifier characters")
    return f"f_{cleaned}" if cleaned[0].isdigit() else cleaned


def load_breast_cancer_dataset() -> Dataset:
    """scikit-learn's bundled breast-cancer data (no download) with snake_case feature names."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    names = [_snake_case(str(n)) for n in bunch.feature_names]
    if len(set(names)) != len(names):
        raise ValueError("sanitised breast-cancer feature names are not unique")
    frame = pd.DataFrame(np.asarray(bunch.data, dtype=np.float64), columns=names)
    frame[LABEL] = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(
        name="breast_cancer",
        frame=frame,
        feature_names=names,
        description="Wisconsin diagnostic breast cancer (scikit-learn); label 1 = benign",
    )


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def _windows(
    customer: np.ndarray, seconds: np.ndarray, amount: np.ndarray, window_s: int, span_s: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: count and amount sum of the same customer's strictly earlier rows in the window.

    ``customer`` and ``seconds`` must be sorted by (customer, seconds).
    """
    band = np.int64(span_s + window_s + 1)
    keys = customer.astype(np.int64) * band + seconds.astype(np.int64)
    floor = np.maximum(keys - window_s, customer.astype(np.int64) * band)
    left = np.searchsorted(keys, floor, side="left")
    right = np.searchsorted(keys, keys, side="left")
    sums = np.concatenate([[0.0], np.cumsum(amount)])
    return (right - left).astype(np.int64), sums[right] - sums[left]


def generate_fraud_transactions(
    n_rows: int = 20_000,
    n_customers: int = 2_000,
    seed: int = 7,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    days: int = 90,
    drift: float = 0.0,
    bias: float = 0.0,
) -> Dataset:
    """Synthetic card transactions with a fraud label; see the module docstring for the process.

    Columns: ``customer_id`` (int64), ``event_timestamp`` (UTC), the float features in
    :data:`FRAUD_FEATURES` order, ``label`` (int64, 1 = fraud) and the protected attribute
    ``age_band`` (string, not a feature). Rows are in time order.
    """
    n_rows = _check_int("n_rows", n_rows, 1)
    n_customers = _check_int("n_customers", n_customers, 1)
    seed = _check_int("seed", seed, 0)
    days = _check_int("days", days, 1)
    if isinstance(drift, bool) or not isinstance(drift, int | float | np.floating):
        raise ValueError(f"drift must be a number in [0, 1], got {drift!r}")
    drift = float(drift)
    if not 0.0 <= drift <= 1.0:  # also rejects NaN
        raise ValueError(f"drift must be in [0, 1], got {drift}")
    if isinstance(bias, bool) or not isinstance(bias, int | float | np.floating):
        raise ValueError(f"bias must be a number in [0, 1], got {bias!r}")
    bias = float(bias)
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias must be in [0, 1], got {bias}")
    if not isinstance(start, datetime):
        raise ValueError(f"start must be a datetime, got {start!r}")
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be timezone-aware (e.g. datetime(2026, 1, 1, tzinfo=UTC))")

    rng = np.random.default_rng(seed)

    # 1. customers
    risk = rng.normal(0.0, 1.0, n_customers)
    home = rng.choice(
        len(_COUNTRIES), size=n_customers, p=_COUNTRY_WEIGHTS / _COUNTRY_WEIGHTS.sum()
    )
    opened_before = np.minimum(1.0 + rng.exponential(700.0, n_customers), 3650.0)
    log_spend = rng.normal(np.log(45.0), 0.6, n_customers)
    activity = rng.gamma(1.5, 1.0, n_customers)

    # 2. transactions
    cust = rng.choice(n_customers, size=n_rows, p=activity / activity.sum())
    day = rng.integers(0, days, n_rows)
    hour = rng.choice(24, size=n_rows, p=_HOUR_PROFILE / _HOUR_PROFILE.sum())
    second_of_hour = rng.integers(0, 3600, n_rows)
    seconds = day * _DAY + hour * 3600 + second_of_hour
    amount_noise = rng.normal(0.0, 0.8, n_rows)
    foreign_u = rng.random(n_rows)
    country_shift = rng.integers(1, len(_COUNTRIES), n_rows)
    merchant_base = rng.beta(2.0, 8.0, n_rows)
    label_u = rng.random(n_rows)
    # the protected attribute: its own stream, so the draws above are those of older releases
    older = np.random.default_rng([seed, 14]).random(n_customers) < AGE_40_PLUS_SHARE
    in_band = older[cust].astype(np.float64)  # 1.0 for a 40_plus customer's transactions

    # 3. features (drift = deterministic transforms of the same draws)
    amount = np.round(np.exp(log_spend[cust] + amount_noise) * (1.0 + drift), 2)
    amount = np.maximum(amount, 0.01)
    p_foreign = 0.03 + 0.05 * _sigmoid(risk[cust]) + 0.15 * drift + 0.5 * bias * in_band
    abroad = (home[cust] + country_shift) % len(_COUNTRIES)  # any country but home
    country = np.where(foreign_u < p_foreign, abroad, home[cust])
    is_foreign = (country != home[cust]).astype(np.float64)
    merchant_risk = merchant_base ** (1.0 / (1.0 + 0.6 * drift + 3.0 * bias * in_band))
    customer_age_days = opened_before[cust] + seconds / _DAY

    order = np.lexsort((seconds, cust))  # by customer, then time
    span = days * _DAY
    count_24h, _ = _windows(cust[order], seconds[order], amount[order], _DAY, span)
    count_30d, sum_30d = _windows(cust[order], seconds[order], amount[order], 30 * _DAY, span)
    txn_count_24h = np.empty(n_rows, dtype=np.float64)
    txn_count_24h[order] = count_24h
    avg_amount_30d = np.empty(n_rows, dtype=np.float64)
    avg_amount_30d[order] = np.where(
        count_30d > 0, sum_30d / np.maximum(count_30d, 1), amount[order]
    )
    avg_amount_30d = np.round(avg_amount_30d, 2)
    amount_vs_avg = amount / np.maximum(avg_amount_30d, 0.01)

    # 4. label
    c = _LOGIT
    z = (
        c["intercept"]
        + c["latent_risk"] * risk[cust]
        + c["is_foreign"] * is_foreign
        + c["merchant_risk"] * (merchant_risk - 0.2)
        + c["night"] * (hour < 6)
        + c["log_amount_vs_avg"] * np.log(amount_vs_avg)
        + c["txn_count_24h"] * np.minimum(txn_count_24h, 6.0)
        + c["new_account"] * np.exp(-customer_age_days / 90.0)
        + 2.5 * bias * in_band  # 0 unless bias > 0 (see "Bias" in the module docstring)
    )
    label = (label_u < _sigmoid(z)).astype(np.int64)

    start_ts = pd.Timestamp(start).tz_convert("UTC")
    frame = pd.DataFrame(
        {
            "customer_id": (cust + 1).astype(np.int64),
            "event_timestamp": start_ts + pd.to_timedelta(seconds, unit="s"),
            "amount": amount,
            "hour_of_day": hour.astype(np.float64),
            "is_foreign": is_foreign,
            "merchant_risk": merchant_risk,
            "customer_age_days": customer_age_days,
            "txn_count_24h": txn_count_24h,
            "avg_amount_30d": avg_amount_30d,
            "amount_vs_avg_30d": amount_vs_avg,
            LABEL: label,
            PROTECTED_ATTRIBUTE: np.where(older[cust], AGE_BANDS[1], AGE_BANDS[0]),
        }
    )
    frame = frame.sort_values(["event_timestamp", "customer_id"], kind="stable")
    frame = frame.reset_index(drop=True)
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[ns, UTC]")
    return Dataset(
        name="fraud_transactions",
        frame=frame,
        feature_names=list(FRAUD_FEATURES),
        description=(
            f"synthetic card transactions: n_rows={n_rows}, n_customers={n_customers}, "
            f"seed={seed}, start={start_ts.isoformat()}, days={days}, drift={drift}"
            + (f", bias={bias}" if bias else "")
        ),
    )
