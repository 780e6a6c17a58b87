"""fedsieve's server side: the AnomalyFilter strategy wrapper (here), the strategy factory for
an operator's ServerApp (:mod:`fedsieve.server.factory`) and the example ServerApp
(:mod:`fedsieve.server.app`)."""

from fedsieve.server.ordering import ContentOrderedGrid
from fedsieve.server.strategy import REASON_CODES, AnomalyFilter, Exclusion

__all__ = ["AnomalyFilter", "ContentOrderedGrid", "Exclusion", "REASON_CODES"]
