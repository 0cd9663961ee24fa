"""Rate limits for the API calls that cost Caly (and the user's servers) real work.

Kept apart from caly/api.py: DRF reads DEFAULT_THROTTLE_CLASSES while defining APIView, so this
module must not import rest_framework.views.
"""

from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle


class PostRateThrottle(ScopedRateThrottle):
    """Per-user limit on POSTs to views that name a `throttle_scope`; reads are not limited.

    Rates are read when a request comes in (not when the class is imported), so changing
    REST_FRAMEWORK takes effect at once.
    """

    def allow_request(self, request, view):
        if request.method != "POST":
            return True
        return super().allow_request(request, view)

    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
