"""Human review of a dataset dir: a Flask page where reviewers judge each pair (`create_app`, `serve`), their
decisions in SQLite (`ReviewStore`), agreement between reviewers (`cohen_kappa`, `pairwise_agreement`) and the
reviewed dataset written back in the dataset dir format (`export_reviewed`)."""

from data_synthesis.review.agreement import Agreement, cohen_kappa, format_agreement, pairwise_agreement
from data_synthesis.review.app import create_app, load_review_pairs, serve
from data_synthesis.review.export import ExportResult, export_reviewed, review_outcome
from data_synthesis.review.store import (
    CHOICES,
    DB_NAME,
    VERDICTS,
    AlreadyDecided,
    Decision,
    ReviewError,
    ReviewStore,
    existing_db,
    perfect_side,
    shown_perfect_side,
    verdict_of,
)

__all__ = [
    "CHOICES",
    "DB_NAME",
    "VERDICTS",
    "Agreement",
    "AlreadyDecided",
    "Decision",
    "ExportResult",
    "ReviewError",
    "ReviewStore",
    "cohen_kappa",
    "create_app",
    "existing_db",
    "export_reviewed",
    "format_agreement",
    "load_review_pairs",
    "pairwise_agreement",
    "perfect_side",
    "review_outcome",
    "serve",
    "shown_perfect_side",
    "verdict_of",
]
