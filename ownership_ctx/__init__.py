"""ownership_ctx: make every LLM dollar attributable to a team, workflow, feature and customer.

The core (this package's top level) is standard library only; framework adapters live in their
own modules (`ownership_ctx.asgi`, `ownership_ctx.wsgi`, `ownership_ctx.logs`, ...) and import
their framework lazily.
"""

from .codec import decode, decode_header, encode, encode_header, new_trace_id
from .context import ContextThreadPoolExecutor, bind, current, propagate
from .envelope import FIELDS, Attribution, Envelope, InvalidEnvelope, Problem
from .gate import Entry, Gate
from .hashing import ConfigurationError, Keys, hash_identifier
from .policy import EdgeHeaders, Inbound, Mode, Policy, Rule, Trust

__version__ = "0.1.0"

__all__ = [
    "FIELDS",
    "Attribution",
    "ConfigurationError",
    "ContextThreadPoolExecutor",
    "EdgeHeaders",
    "Entry",
    "Envelope",
    "Gate",
    "Inbound",
    "InvalidEnvelope",
    "Keys",
    "Mode",
    "Policy",
    "Problem",
    "Rule",
    "Trust",
    "bind",
    "current",
    "decode",
    "decode_header",
    "encode",
    "encode_header",
    "hash_identifier",
    "new_trace_id",
    "propagate",
]
