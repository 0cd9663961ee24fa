"""API-wide pieces: the JSON error format and JSON 400/404/500 pages under /api/."""

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework.exceptions import NotFound
from rest_framework.views import exception_handler as drf_exception_handler

from caly.scrub import scrub_data


def exception_handler(exc, context):
    """DRF's handler; every error the API returns is a JSON object naming the field or problem.

    A missing object, or one that belongs to someone else, is the same plain "Not found.", and
    no error text carries a credential (a URL with a password in it, say).
    """
    if isinstance(exc, Http404):
        exc = NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # unexpected: Django logs it and `server_error` answers
    if isinstance(response.data, list):
        response.data = {"detail": response.data}
    response.data = scrub_data(response.data)
    return response


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception):
    if _is_api(request):
        too_big = isinstance(exception, RequestDataTooBig)
        detail = "The request body is too large." if too_big else "Bad request."
        return JsonResponse({"detail": detail}, status=400)
    return defaults.bad_request(request, exception)


def page_not_found(request, exception):
    if _is_api(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _is_api(request):
        return JsonResponse(
            {"detail": "Internal error; it has been logged. Try again later."}, status=500
        )
    return defaults.server_error(request)
