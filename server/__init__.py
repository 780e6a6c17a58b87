"""fedsieve's server side: the AnomalyFilter strategy wrapper and its two screening modes,
UploadScreening and LocalScreening (here), the strategy factory for an operator's ServerApp
(:mod:`fedsieve.server.factory`) and the example ServerApp (:mod:`fedsieve.server.app`)."""

from fedsieve.server.local_screening import LocalScreening
from fedsieve.server.ordering import ContentOrderedGrid
from fedsieve.server.screening_mode import ScreeningMode
from fedsieve.server.strategy import REASON_CODES, AnomalyFilter, Exclusion
from fedsieve.server.upload_screening import UploadScreening

__all__ = ["AnomalyFilter", "ContentOrderedGrid", "Exclusion", "LocalScreening",
           "REASON_CODES", "ScreeningMode", "UploadScreening"]
