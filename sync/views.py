"""The user dashboard (server-rendered; live parts poll the JSON API)."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from calendars import selectors


@login_required
def dashboard(request):
    accounts = selectors.accounts_for_user(user=request.user).prefetch_related("calendars")
    return render(request, "dashboard.html", {"accounts": accounts})
