"""`POST /hooks/google/`: Google's push notifications (sync.services.push).

Answered at once and always 200 (Google retries anything else, and an unknown or forged channel
must learn nothing); the work is one lookup and, for a change, one queued run.
"""

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from sync.services import push


@csrf_exempt
@require_POST
def google_hook(request):
    push.notification_receive(
        channel_id=request.headers.get("X-Goog-Channel-ID", ""),
        token=request.headers.get("X-Goog-Channel-Token", ""),
        state=request.headers.get("X-Goog-Resource-State", ""),
    )
    return HttpResponse(status=200)
