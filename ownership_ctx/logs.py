"""Put the envelope on every log line: a structlog processor and a stdlib `logging.Filter`.

Both add the bound envelope's fields that have values (``trace_id``, ``owner_team``,
``workflow_id``, ``feature``, ``tenant``, ``user``, ``attribution`` and extras as
``extra.<key>``), under names you can change. The processor adds nothing when no envelope is
bound; the filter always sets every standard field, to ``default_value`` when it has no value
(as asgi-correlation-id's filter does), so a format string naming them works on lines logged
outside any request or task. Neither imports structlog: a structlog processor is just a callable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

from .context import current

__all__ = ["FIELDS", "OwnershipLogFilter", "add_ownership", "ownership_processor"]

#: The envelope's standard fields, as `Envelope.as_dict` names them.
FIELDS: Final = (
    "trace_id",
    "owner_team",
    "workflow_id",
    "feature",
    "tenant",
    "user",
    "attribution",
)


class _Fields:
    __slots__ = ("_prefix", "_rename")

    def __init__(self, rename: Mapping[str, str] | None, prefix: str) -> None:
        self._rename = dict(rename or {})
        self._prefix = prefix

    def names(self) -> tuple[str, ...]:
        """The attribute names of the standard fields (renamed and prefixed)."""
        return tuple(self._prefix + self._rename.get(k, k) for k in FIELDS)

    def of_current(self) -> dict[str, str] | None:
        envelope = current()
        if envelope is None:
            return None
        rename, prefix = self._rename, self._prefix
        return {prefix + rename.get(k, k): v for k, v in envelope.as_dict().items()}


def ownership_processor(rename: Mapping[str, str] | None = None, prefix: str = "") -> Any:
    """A structlog processor adding the envelope; ``rename`` maps field names to keys.

    ``add_ownership`` is this with the default names.
    """
    fields = _Fields(rename, prefix)

    def add_ownership(
        logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        values = fields.of_current()
        if values:
            for key, value in values.items():
                event_dict.setdefault(key, value)
        return event_dict

    return add_ownership


add_ownership = ownership_processor()


class OwnershipLogFilter(logging.Filter):
    """Adds the envelope's fields as attributes of each `logging.LogRecord`; never drops one.

    Attach it to a handler (so records from every logger get it) and name the fields in the
    format; outside any unit of work (and for a field the envelope lacks) they read
    ``default_value`` (``None`` by default: ``null`` in JSON logs; ``"-"`` suits text)::

        handler.addFilter(OwnershipLogFilter(default_value="-"))
        handler.setFormatter(logging.Formatter("%(message)s team=%(owner_team)s %(trace_id)s"))

    A value a record already has (``extra=``) is never replaced.
    """

    def __init__(
        self,
        rename: Mapping[str, str] | None = None,
        prefix: str = "",
        default_value: str | None = None,
    ) -> None:
        super().__init__()
        self._fields = _Fields(rename, prefix)
        self._defaults = {name: default_value for name in self._fields.names()}

    def filter(self, record: logging.LogRecord) -> bool:
        values = self._fields.of_current()
        if values:
            for key, value in values.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        for key, default in self._defaults.items():
            if not hasattr(record, key):
                setattr(record, key, default)
        return True
