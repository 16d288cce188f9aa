"""transferkit.transfer: move knowledge from a source model into a target model."""

from transferkit.transfer.parameters import TransferEntry, TransferReport, transfer_parameters

__all__ = [
    "TransferEntry",
    "TransferReport",
    "transfer_parameters",
]
