"""How the API reads request bodies: DRF's parsers, and a JSON one that survives nesting bombs.

Kept apart from caly/api.py: DRF reads DEFAULT_PARSER_CLASSES while defining APIView, so this
module must not import rest_framework.views.
"""

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser; a body nested deeper than Python's decoder goes is a 400, not a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
