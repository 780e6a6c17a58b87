"""fedsieve's client side: the SDK a Flower user adds to their ClientApp, and the example app."""

from fedsieve.client.sdk import FedSieve

__all__ = ["FedSieve"]
