"""The audit: records in Dify's database against what each sink acknowledged (the delivery ledger).

``reconcile(expected, ledger)`` -> :class:`AuditReport`; ``render.to_text`` / ``render.to_json`` show it;
``periodic`` runs it from the daemon and ``metrics`` turns the last run into gauges. Nothing here reads
Dify's database: the records come in as :class:`Expected` values.
"""

from traceexport.audit.reconcile import AuditReport, Expected, Group, Ledger, reconcile

__all__ = ["AuditReport", "Expected", "Group", "Ledger", "reconcile"]
