"""fedsieve's server side: the AnomalyFilter strategy wrapper and the ServerApp."""

from fedsieve.server.strategy import AnomalyFilter

__all__ = ["AnomalyFilter"]
